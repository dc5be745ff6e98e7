// Bindings of the native decode step (omniad/ort_decoder.hpp). The GIL is released around every run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "buffers.hpp"
#include "omniad/ort_decoder.hpp"

namespace py = pybind11;
using omniad::py_buffers::Kind;
using omniad::py_buffers::require;
namespace ort = omniad::ort;
namespace smp = omniad::sampling;

namespace {

// A checked array the native side writes into.
template <typename T>
T* writable(const omniad::py_buffers::Checked& c, const char* name, std::size_t size) {
    if (!c.array.writeable()) throw py::value_error(std::string(name) + " must be writeable");
    if (std::size_t(c.array.size()) < size)
        throw py::value_error(std::string(name) + " must have at least " + std::to_string(size) + " entries");
    return static_cast<T*>(const_cast<void*>(c.data()));
}

ort::EmbedTable table_arg(py::handle obj) {
    auto t = require(obj, "table", {Kind::F32, Kind::F16}, 2, 2);
    return {t.data(), t.kind == Kind::F16, std::size_t(t.dim(0)), std::size_t(t.dim(1))};
}

struct PyStep;
float* draft_arg(PyStep& s, py::handle draft, std::size_t tokens);

// The token text table with the arrays it points into.
struct PyTokenText {
    ort::TokenText text;
    py::object keep;
};

// A token loop checked and bound ahead of its run (prepare), so the decode phase starts with one argument-free call
// (resume): right after the prefill's run the interpreter and these checks would run with cold caches.
struct Prepared {
    ort::LoopConfig cfg;
    ort::LoopState st;
    ort::EmbedTable table;
    std::vector<omniad::tam::StreamDecoder*> streams;
    int64_t *next_pos = nullptr, *mask = nullptr, *out = nullptr, *timings = nullptr;
    std::size_t width = 0, length = 0;
    py::tuple keep;  // every Python object the pointers above point into
};

struct PyStep {
    std::shared_ptr<ort::Step> step;
    py::object logits;  // a view of the step's buffer, kept alive by this object
    std::unique_ptr<Prepared> prepared;
};

// The buffer a run with drafted tokens writes the earlier positions' logits to: (batch, tokens - 1, vocab) float32,
// or none.
float* draft_arg(PyStep& s, py::handle draft, std::size_t tokens) {
    if (draft.is_none()) return nullptr;
    auto d = require(draft, "draft", {Kind::F32}, 3, 3);
    const std::size_t B = s.step->batch(), V = s.step->vocab();
    if (tokens < 2 || std::size_t(d.dim(0)) != B || std::size_t(d.dim(1)) != tokens - 1 || std::size_t(d.dim(2)) != V)
        throw py::value_error("draft must be (batch, tokens - 1, vocab) float32, for a run of 2 or more tokens");
    return writable<float>(d, "draft", B * (tokens - 1) * V);
}

// Checks and binds a loop's arguments (Step::loop, ort_decoder.hpp); `length` is the cache length the loop will
// start at. The arrays must stay unchanged in shape until resume; the loop writes into them.
void prepare_loop(PyStep& s, py::object sampler, py::object rng, py::handle eos, int64_t pad,
                  std::size_t max_new, py::handle score_target, py::handle finish, py::handle generated,
                  py::handle score_pos, py::handle score_logp, py::handle table, py::handle next_pos, py::handle mask,
                  std::size_t length, py::handle out_ids, py::object timings, py::object mask_streams,
                  py::object text) {
    const std::size_t B = s.step->batch();
    auto e = require(eos, "eos", {Kind::I64}, 1, 1);
    auto tg = require(score_target, "score_target", {Kind::I64}, 1, 1);
    auto f = require(finish, "finish", {Kind::U8}, 1, 1);
    auto g = require(generated, "generated", {Kind::I64}, 1, 1);
    auto sp = require(score_pos, "score_pos", {Kind::I64}, 1, 1);
    auto sl = require(score_logp, "score_logp", {Kind::F64}, 1, 1);
    auto n = require(next_pos, "next_pos", {Kind::I64}, 1, 1);
    auto k = require(mask, "mask", {Kind::I64}, 2, 2);
    auto o = require(out_ids, "out_ids", {Kind::I64}, 2, 2);
    if (std::size_t(o.dim(1)) != B || std::size_t(k.dim(0)) != B)
        throw py::value_error("out_ids must be (steps, batch) and mask (batch, width)");
    auto p = std::make_unique<Prepared>();
    p->table = table_arg(table);
    ort::LoopConfig& cfg = p->cfg;
    cfg.sampler = &sampler.cast<const smp::Sampler&>();
    cfg.rng = rng.is_none() ? nullptr : &rng.cast<smp::Rng&>();
    cfg.eos = static_cast<const int64_t*>(e.data());
    cfg.n_eos = std::size_t(e.dim(0));
    cfg.pad = pad;
    cfg.max_new = max_new;
    cfg.score_target = static_cast<const int64_t*>(tg.data());
    cfg.score_len = std::size_t(tg.dim(0));
    cfg.max_steps = std::size_t(o.dim(0));
    ort::LoopState& st = p->st;
    st.finish = writable<uint8_t>(f, "finish", B);
    st.generated = writable<int64_t>(g, "generated", B);
    st.score_pos = writable<int64_t>(sp, "score_pos", B);
    st.score_logp = writable<double>(sl, "score_logp", B);
    for (std::size_t b = 0; b < B; ++b)
        if (st.score_pos[b] >= int64_t(cfg.score_len))
            throw py::value_error("score_pos is past the end of score_target");
    py::object tm = py::none();
    if (!timings.is_none()) {
        auto t = require(timings, "timings", {Kind::I64}, 2, 2);
        if (t.dim(0) < o.dim(0) || t.dim(1) != 2) throw py::value_error("timings must be (steps, 2)");
        p->timings = writable<int64_t>(t, "timings", std::size_t(t.dim(0)) * 2);
        tm = t.array;
    }
    if (!mask_streams.is_none()) {
        auto list = mask_streams.cast<py::sequence>();
        if (std::size_t(list.size()) != B) throw py::value_error("mask_streams must have one entry per row");
        for (py::handle d : list) p->streams.push_back(d.is_none() ? nullptr : d.cast<omniad::tam::StreamDecoder*>());
        st.mask_stream = p->streams.data();
    }
    if (!text.is_none()) cfg.text = &text.cast<const PyTokenText&>().text;
    p->next_pos = writable<int64_t>(n, "next_pos", B);
    p->mask = writable<int64_t>(k, "mask", B);
    p->out = writable<int64_t>(o, "out_ids", std::size_t(o.dim(0)) * B);
    p->width = std::size_t(k.dim(1));
    p->length = length;
    p->keep = py::make_tuple(sampler, rng, e.array, tg.array, f.array, g.array, sp.array, sl.array,
                             py::reinterpret_borrow<py::object>(table), n.array, k.array, o.array, tm, mask_streams,
                             text);
    s.prepared = std::move(p);
}

// Runs the prepared loop (once) -> (steps, forwards, handed_back).
py::tuple resume_loop(PyStep& s) {
    if (!s.prepared) throw py::value_error("resume: no loop prepared (prepare first; a loop runs once)");
    std::unique_ptr<Prepared> p = std::move(s.prepared);
    std::size_t steps = 0, forwards = 0, len = p->length;
    bool handed_back = false;
    {
        py::gil_scoped_release unlocked;
        steps = s.step->loop(p->cfg, p->st, p->table, p->next_pos, p->mask, p->width, &len, p->out, p->timings,
                             &forwards, &handed_back);
    }
    return py::make_tuple(steps, forwards, handed_back);
}

}  // namespace

void bind_decoder(py::module_& m) {
    py::class_<ort::Session, std::shared_ptr<ort::Session>>(m, "OrtSession")
        .def(py::init([](const std::string& library, const std::string& model, int threads, int optimization,
                         bool mem_pattern, bool spinning) {
                 auto runtime = ort::Runtime::load(library);
                 py::gil_scoped_release unlocked;  // loading a graph takes a while
                 return std::make_shared<ort::Session>(runtime, model, ort::SessionConfig{threads, optimization,
                                                                                           mem_pattern, spinning});
             }),
             py::arg("library"), py::arg("model"), py::arg("threads"), py::arg("optimization"),
             py::arg("mem_pattern"), py::arg("spinning") = false)
        .def_property_readonly("inputs", &ort::Session::inputs)
        .def_property_readonly("outputs", &ort::Session::outputs)
        .def("record", &ort::Session::record, py::arg("on"))
        .def("take_runs", &ort::Session::take_runs);

    py::class_<PyTokenText>(m, "TokenText")
        .def(py::init([](py::handle bytes, py::handle offsets, py::handle clean) {
                 auto b = require(bytes, "bytes", {Kind::U8}, 1, 1);
                 auto o = require(offsets, "offsets", {Kind::I64}, 1, 1);
                 auto c = require(clean, "clean", {Kind::U8}, 1, 1);
                 const std::size_t vocab = std::size_t(c.dim(0));
                 if (std::size_t(o.dim(0)) != vocab + 1) throw py::value_error("offsets must have vocab + 1 entries");
                 const auto* off = static_cast<const int64_t*>(o.data());
                 for (std::size_t t = 0; t < vocab; ++t)
                     if (off[t] < 0 || off[t] > off[t + 1] || off[t + 1] > int64_t(b.dim(0)))
                         throw py::value_error("offsets must rise within bytes (token " + std::to_string(t) + ")");
                 PyTokenText t;
                 t.text = {static_cast<const uint8_t*>(b.data()), off, static_cast<const uint8_t*>(c.data()), vocab};
                 t.keep = py::make_tuple(b.array, o.array, c.array);
                 return t;
             }),
             py::arg("bytes"), py::arg("offsets"), py::arg("clean"))
        .def_property_readonly("vocab", [](const PyTokenText& t) { return t.text.vocab; });

    py::class_<PyStep>(m, "DecodeStep")
        .def(py::init([](std::shared_ptr<ort::Session> session, std::size_t batch, std::size_t vocab,
                         std::size_t max_len, const py::list& kv, std::vector<std::string> names) {
                 std::vector<ort::KvTensor> tensors;
                 for (py::handle item : kv) {
                     auto t = item.cast<py::tuple>();
                     if (t.size() != 7) throw py::value_error("kv entries are (name, output, dims, base, row_stride, "
                                                              "slot_bytes, at_past)");
                     tensors.push_back({t[0].cast<std::string>(), t[1].cast<bool>(), t[2].cast<std::vector<int64_t>>(),
                                        t[3].cast<uintptr_t>(), t[4].cast<std::size_t>(), t[5].cast<std::size_t>(),
                                        t[6].cast<bool>()});
                 }
                 if (names.size() != 4 && names.size() != 5)
                     throw py::value_error("names are (embeds, positions, mask, logits[, draft logits])");
                 PyStep s;
                 s.step = std::make_shared<ort::Step>(
                     std::move(session), batch, vocab, max_len, std::move(tensors),
                     ort::Names{names[0], names[1], names[2], names[3], names.size() == 5 ? names[4] : ""});
                 return s;
             }),
             py::arg("session"), py::arg("batch"), py::arg("vocab"), py::arg("max_len"), py::arg("kv"),
             py::arg("names"))
        .def_property_readonly(
            "logits",
            [](py::object self) {
                PyStep& s = self.cast<PyStep&>();
                if (!s.logits) {
                    s.logits = py::array_t<float>({py::ssize_t(s.step->batch()), py::ssize_t(s.step->vocab())},
                                                  s.step->logits(), self);
                }
                return s.logits;
            })
        .def_property_readonly("last_run_ns", [](const PyStep& s) { return s.step->last_run_ns(); })
        .def("run",
             [](PyStep& s, py::handle embeds, py::handle positions, py::handle mask, std::size_t past,
                py::handle draft) {
                 auto e = require(embeds, "embeds", {Kind::F32}, 3, 3);
                 auto p = require(positions, "positions", {Kind::I64}, 3, 3);
                 auto k = require(mask, "attention_mask", {Kind::I64}, 2, 2);
                 const std::size_t B = s.step->batch(), S = std::size_t(e.dim(1));
                 if (std::size_t(e.dim(0)) != B || p.dim(0) != 3 || std::size_t(p.dim(1)) != B ||
                     std::size_t(p.dim(2)) != S || std::size_t(k.dim(0)) != B || std::size_t(k.dim(1)) != past + S)
                     throw py::value_error("embeds (B, S, H), positions (3, B, S) and attention_mask (B, past + S) "
                                           "do not agree");
                 float* dp = draft_arg(s, draft, S);
                 py::gil_scoped_release unlocked;
                 s.step->run(static_cast<const float*>(e.data()), std::size_t(e.dim(2)),
                             static_cast<const int64_t*>(p.data()), static_cast<const int64_t*>(k.data()), S, past,
                             dp);
             },
             py::arg("embeds"), py::arg("positions"), py::arg("attention_mask"), py::arg("past"),
             py::arg("draft") = py::none())
        .def("feed",
             [](PyStep& s, py::handle table, py::handle ids, py::handle next_pos, py::handle mask,
                std::size_t length, py::handle draft) {
                 const ort::EmbedTable tab = table_arg(table);
                 auto i = require(ids, "ids", {Kind::I64}, 2, 2);
                 auto n = require(next_pos, "next_pos", {Kind::I64}, 1, 1);
                 auto k = require(mask, "mask", {Kind::I64}, 2, 2);
                 const std::size_t B = s.step->batch();
                 if (std::size_t(i.dim(0)) != B || std::size_t(n.dim(0)) != B || std::size_t(k.dim(0)) != B)
                     throw py::value_error("ids, next_pos and mask must have one row per batch row");
                 int64_t* np_ = writable<int64_t>(n, "next_pos", B);
                 int64_t* mp = writable<int64_t>(k, "mask", B);
                 const int64_t* ip = static_cast<const int64_t*>(i.data());
                 const std::size_t S = std::size_t(i.dim(1)), width = std::size_t(k.dim(1));
                 float* dp = draft_arg(s, draft, S);
                 py::gil_scoped_release unlocked;
                 s.step->feed(tab, ip, S, np_, mp, width, length, dp);
             },
             py::arg("table"), py::arg("ids"), py::arg("next_pos"), py::arg("mask"), py::arg("length"),
             py::arg("draft") = py::none())
        .def("prepare", &prepare_loop, py::arg("sampler"), py::arg("rng").none(true), py::arg("eos"), py::arg("pad"),
             py::arg("max_new"), py::arg("score_target"), py::arg("finish"), py::arg("generated"),
             py::arg("score_pos"), py::arg("score_logp"), py::arg("table"), py::arg("next_pos"), py::arg("mask"),
             py::arg("length"), py::arg("out_ids"), py::arg("timings").none(true),
             py::arg("mask_streams") = py::none(), py::arg("text") = py::none())
        .def("resume", &resume_loop);
}
