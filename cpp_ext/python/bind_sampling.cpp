// Bindings of the sampler. Arrays are checked by buffers.hpp; the GIL is released around every native call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "buffers.hpp"
#include "omniad/sampling.hpp"

namespace py = pybind11;
using omniad::py_buffers::Kind;
using omniad::py_buffers::require;
namespace smp = omniad::sampling;

namespace {

smp::LogitsView logits_arg(py::handle obj) {
    auto a = require(obj, "logits", {Kind::F32, Kind::F16}, 1, 2);
    smp::LogitsView v;
    v.data = a.data();
    v.dtype = a.kind == Kind::F16 ? smp::DType::F16 : smp::DType::F32;
    v.batch = a.ndim() == 2 ? std::size_t(a.dim(0)) : 1;
    v.vocab = std::size_t(a.dim(a.ndim() - 1));
    if (v.batch == 0 || v.vocab == 0) throw py::value_error("logits must not be empty, got shape with a zero");
    return v;
}

std::string rows_msg(const char* name, std::size_t batch, const std::string& inner) {
    return std::string(name) + " must have shape (" + std::to_string(batch) + ", " + inner + ") to match logits";
}

}  // namespace

void bind_sampling(py::module_& m) {
    // A generator is used by one call at a time (the caller's contract); the sampler itself is immutable.
    py::class_<smp::Rng>(m, "Rng")
        .def(py::init<uint64_t>(), py::arg("seed"))
        .def("reset", &smp::Rng::reset, py::arg("seed"));
    py::class_<smp::Sampler>(m, "Sampler")
        .def(py::init([](float temperature, int top_k, float top_p, float min_p, float repetition_penalty) {
                 return smp::Sampler({temperature, top_k, top_p, min_p, repetition_penalty});
             }),
             py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"),
             py::arg("repetition_penalty"))
        .def("sample",
             [](const smp::Sampler& s, py::handle logits, py::handle previous, py::handle allowed,
                bool want_logprobs, smp::Rng* rng) {
                 smp::LogitsView lv = logits_arg(logits);
                 const std::size_t B = lv.batch, V = lv.vocab;
                 py::object keep_prev, keep_mask;  // keep the checked arrays alive while the GIL is released
                 smp::PreviousView pv;
                 if (!previous.is_none()) {
                     auto p = require(previous, "previous", {Kind::I64}, 2, 2);
                     if (std::size_t(p.dim(0)) != B) throw py::value_error(rows_msg("previous", B, "N"));
                     pv.ids = static_cast<const int64_t*>(p.data());
                     pv.per_row = std::size_t(p.dim(1));
                     keep_prev = p.array;
                 }
                 smp::MaskView mv;
                 py::array_t<uint32_t> packed;
                 if (!allowed.is_none()) {
                     auto a = require(allowed, "allowed_mask", {Kind::U32, Kind::Bool}, 2, 2);
                     const std::size_t words = (V + 31) / 32;
                     if (a.kind == Kind::Bool) {
                         if (std::size_t(a.dim(0)) != B || std::size_t(a.dim(1)) != V)
                             throw py::value_error(rows_msg("allowed_mask (bool)", B, std::to_string(V)));
                         packed = py::array_t<uint32_t>({py::ssize_t(B), py::ssize_t(words)});
                         smp::pack_bool_mask(static_cast<const uint8_t*>(a.data()), B, V, packed.mutable_data());
                         mv.words = packed.data();
                     } else {
                         if (std::size_t(a.dim(0)) != B || std::size_t(a.dim(1)) != words)
                             throw py::value_error(rows_msg("allowed_mask (packed uint32)", B,
                                                            "ceil(V / 32) = " + std::to_string(words)));
                         mv.words = static_cast<const uint32_t*>(a.data());
                     }
                     mv.words_per_row = words;
                     keep_mask = a.array;
                 }
                 py::array_t<int64_t> ids(static_cast<py::ssize_t>(B));
                 py::array_t<float> lps(static_cast<py::ssize_t>(B));
                 int64_t* ids_ptr = ids.mutable_data();
                 float* lp_ptr = want_logprobs ? lps.mutable_data() : nullptr;
                 {
                     py::gil_scoped_release unlocked;
                     s.sample(lv, pv, mv, rng, ids_ptr, lp_ptr);
                 }
                 return want_logprobs ? py::object(py::make_tuple(ids, lps)) : py::object(ids);
             },
             py::arg("logits"), py::arg("previous"), py::arg("allowed_mask"), py::arg("logprobs"),
             py::arg("rng").none(true));

    m.def("log_softmax_at",
          [](py::handle logits, py::handle ids, float temperature) {
              smp::LogitsView lv = logits_arg(logits);
              auto i = require(ids, "ids", {Kind::I64}, 1, 1);
              if (std::size_t(i.dim(0)) != lv.batch)
                  throw py::value_error("ids must have shape (" + std::to_string(lv.batch) + ",) to match logits");
              py::array_t<float> out(static_cast<py::ssize_t>(lv.batch));
              float* dst = out.mutable_data();
              const int64_t* src = static_cast<const int64_t*>(i.data());
              {
                  py::gil_scoped_release unlocked;
                  smp::log_softmax_at(lv, src, temperature, dst);
              }
              return out;
          },
          py::arg("logits"), py::arg("ids"), py::arg("temperature"));
}
