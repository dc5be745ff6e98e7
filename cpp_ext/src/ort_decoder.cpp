// Decode step over ONNX Runtime's C API (see omniad/ort_decoder.hpp). Tensors are wrapped around the step's and the
// cache's memory (CreateTensorWithDataAsOrtValue), so the cache is bound where it lies and outputs land in place; the
// handles of a one-token step are made once and kept (per cache length where the shape follows it), so a step only
// fills its buffers and calls Run. Plain Run with kept handles needs no IoBinding: binding by name per step would
// cost the same lookups Run does.
#include "omniad/ort_decoder.hpp"

#include <dlfcn.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <stdexcept>

#include "onnxruntime_c_api.h"

namespace omniad::ort {
namespace {

// The floor omniad_edge supports (onnxruntime >= 1.20); the vendored header's OrtApi ends at version 20's members.
constexpr uint32_t kOrtApiVersion = 20;

void check(const OrtApi* api, OrtStatus* status, const std::string& what) {
    if (status == nullptr) return;
    std::string message = api->GetErrorMessage(status);
    api->ReleaseStatus(status);
    throw std::runtime_error(what + ": " + message);
}

int64_t thread_cpu_ns() {
    timespec t{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
}

int64_t wall_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Releases the OrtValues of one run, also when it throws.
struct Values {
    const OrtApi* api;
    std::vector<OrtValue*> v;
    ~Values() {
        for (OrtValue* x : v)
            if (x) api->ReleaseValue(x);
    }
};

}  // namespace

std::shared_ptr<Runtime> Runtime::load(const std::string& path) {
    static std::mutex mu;
    static std::map<std::string, std::shared_ptr<Runtime>> loaded;
    std::lock_guard<std::mutex> lock(mu);
    auto found = loaded.find(path);
    if (found != loaded.end()) return found->second;
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);  // already mapped by the onnxruntime package
    if (handle == nullptr) throw std::runtime_error("cannot load " + path + ": " + dlerror());
    using GetApiBase = const OrtApiBase* (*)();
    auto get_base = reinterpret_cast<GetApiBase>(dlsym(handle, "OrtGetApiBase"));
    if (get_base == nullptr) throw std::runtime_error(path + " does not export OrtGetApiBase");
    const OrtApiBase* base = get_base();
    auto rt = std::make_shared<Runtime>();
    rt->path = path;
    rt->api = base->GetApi(kOrtApiVersion);
    if (rt->api == nullptr)
        throw std::runtime_error(path + " (onnxruntime " + base->GetVersionString() + ") does not offer C API version " +
                                 std::to_string(kOrtApiVersion));
    check(rt->api, rt->api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "omniad_edge", &rt->env), "creating the environment");
    check(rt->api, rt->api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &rt->cpu), "memory info");
    loaded[path] = rt;  // kept for the process: sessions and the environment outlive any one caller
    return rt;
}

Session::Session(std::shared_ptr<Runtime> runtime, const std::string& model, const SessionConfig& config)
    : runtime_(std::move(runtime)) {
    const OrtApi* api = runtime_->api;
    OrtSessionOptions* opts = nullptr;
    check(api, api->CreateSessionOptions(&opts), "session options");
    std::unique_ptr<OrtSessionOptions, void (*)(OrtSessionOptions*)> keep(opts, api->ReleaseSessionOptions);
    // The Python session's settings (backends/onnxruntime.py), so both paths compute the same logits.
    check(api, api->SetIntraOpNumThreads(opts, config.threads), "intra-op threads");
    check(api, api->SetInterOpNumThreads(opts, 1), "inter-op threads");
    check(api, api->SetSessionExecutionMode(opts, ORT_SEQUENTIAL), "execution mode");
    check(api, api->SetSessionGraphOptimizationLevel(opts, GraphOptimizationLevel(config.optimization)),
          "optimization level");
    check(api, config.mem_pattern ? api->EnableMemPattern(opts) : api->DisableMemPattern(opts), "memory pattern");
    // spinning between the ops of a run only: the threads sleep once the run returns (backends' spin_entries)
    const char* spin = config.spinning ? "1" : "0";
    check(api, api->AddSessionConfigEntry(opts, "session.intra_op.allow_spinning", spin), "spinning");
    check(api, api->AddSessionConfigEntry(opts, "session.inter_op.allow_spinning", "0"), "spinning");
    check(api, api->AddSessionConfigEntry(opts, "session.force_spinning_stop", spin), "spinning");
    check(api, api->SetSessionLogSeverityLevel(opts, 3), "log level");
    check(api, api->CreateSession(runtime_->env, model.c_str(), opts, &session_), "loading " + model);

    OrtAllocator* alloc = nullptr;
    check(api, api->GetAllocatorWithDefaultOptions(&alloc), "allocator");
    auto names = [&](bool outputs, std::vector<std::string>& into) {
        std::size_t n = 0;
        check(api, outputs ? api->SessionGetOutputCount(session_, &n) : api->SessionGetInputCount(session_, &n),
              "graph I/O");
        for (std::size_t i = 0; i < n; ++i) {
            char* name = nullptr;
            check(api, outputs ? api->SessionGetOutputName(session_, i, alloc, &name)
                               : api->SessionGetInputName(session_, i, alloc, &name),
                  "graph I/O");
            into.emplace_back(name);
            check(api, api->AllocatorFree(alloc, name), "graph I/O");
        }
    };
    names(false, inputs_);
    names(true, outputs_);
}

Session::~Session() {
    if (session_) runtime_->api->ReleaseSession(session_);
}

void Session::record(bool on) {
    std::lock_guard<std::mutex> lock(mu_);
    recording_ = on;
    runs_.clear();
}

void Session::note_run(int64_t wall, int64_t cpu) {
    std::lock_guard<std::mutex> lock(mu_);
    if (recording_.load(std::memory_order_relaxed)) runs_.emplace_back(wall, cpu);
}

std::vector<std::pair<int64_t, int64_t>> Session::take_runs() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::pair<int64_t, int64_t>> out;
    out.swap(runs_);
    return out;
}

void gather_embeddings(const EmbedTable& table, const int64_t* ids, std::size_t n, float* out) {
    const std::size_t h = table.hidden;
    for (std::size_t i = 0; i < n; ++i) {
        const int64_t id = ids[i];
        if (id < 0 || std::size_t(id) >= table.rows)
            throw std::invalid_argument("token id " + std::to_string(id) + " is outside the embedding table (" +
                                        std::to_string(table.rows) + " rows)");
        if (table.f16)
            sampling::kernels::half_to_float_n(static_cast<const uint16_t*>(table.data) + std::size_t(id) * h, h,
                                               out + i * h);
        else
            std::memcpy(out + i * h, static_cast<const float*>(table.data) + std::size_t(id) * h, h * sizeof(float));
    }
}

Step::Step(std::shared_ptr<Session> session, std::size_t batch, std::size_t vocab, std::size_t max_len,
           std::vector<KvTensor> kv, Names names)
    : session_(std::move(session)), batch_(batch), vocab_(vocab), max_len_(max_len), kv_(std::move(kv)),
      names_(std::move(names)), logits_(batch * vocab), scratch_(kv_.size()) {
    if (batch == 0 || vocab == 0 || max_len == 0) throw std::invalid_argument("batch, vocab and max_len must be > 0");
    for (const KvTensor& t : kv_) {
        if (t.dims.empty() || t.dims[0] != kBatch)
            throw std::invalid_argument("KV tensor " + t.name + ": the first dimension must be the batch");
        for (int64_t d : t.dims)
            if (d < kTotal) throw std::invalid_argument("KV tensor " + t.name + ": unknown dimension code");
        if (t.base == 0) throw std::invalid_argument("KV tensor " + t.name + ": null buffer");
    }
    positions1_.resize(3 * batch);
    mask_.resize(batch * max_len);
    in_names_ = {names_.embeds.c_str(), names_.positions.c_str(), names_.mask.c_str()};
    out_names_ = {names_.logits.c_str()};
    for (std::size_t k = 0; k < kv_.size(); ++k) {
        (kv_[k].output ? kv_out_ : kv_in_).push_back(k);
        (kv_[k].output ? out_names_ : in_names_).push_back(kv_[k].name.c_str());
    }
    fixed_.assign(3 + kv_.size(), nullptr);
    by_length_.resize(1 + kv_.size());
    by_length_[0].assign(max_len + 1, nullptr);
    for (std::size_t k = 0; k < kv_.size(); ++k) by_length_[1 + k].assign(max_len, nullptr);
}

Step::~Step() {
    if (!session_) return;
    const OrtApi* api = session_->runtime().api;
    for (OrtValue* v : fixed_)
        if (v) api->ReleaseValue(v);
    for (auto& slots : by_length_)
        for (OrtValue* v : slots)
            if (v) api->ReleaseValue(v);
}

int64_t Step::dim(int64_t d, std::size_t s, std::size_t past) const {
    switch (d) {
        case kBatch: return int64_t(batch_);
        case kPast: return int64_t(past);
        case kNew: return int64_t(s);
        case kTotal: return int64_t(past + s);
        default: return d;
    }
}

OrtValue* Step::make_value(void* data, const std::vector<int64_t>& shape, int type, std::size_t element_bytes,
                           const std::string& name) const {
    const OrtApi* api = session_->runtime().api;
    std::size_t count = 1;
    for (int64_t d : shape) count *= std::size_t(d);
    OrtValue* value = nullptr;
    check(api, api->CreateTensorWithDataAsOrtValue(session_->runtime().cpu, data, count * element_bytes, shape.data(),
                                                   shape.size(), ONNXTensorElementDataType(type), &value),
          "binding " + name);
    return value;
}

OrtValue* Step::kept(std::vector<OrtValue*>& slots, std::size_t at, void* data, const std::vector<int64_t>& shape,
                     int type, std::size_t element_bytes, const std::string& name) {
    OrtValue*& v = slots[at];
    if (v == nullptr) v = make_value(data, shape, type, element_bytes, name);
    return v;
}

void Step::run(const float* embeds, std::size_t hidden, const int64_t* positions, const int64_t* mask, std::size_t s,
               std::size_t past, float* draft) {
    run_bound(embeds, hidden, positions, mask, s, past, false, draft);
}

// own_buffers: a one-token step over embeds1_, positions1_ and mask_, whose handles are kept; otherwise the caller's
// arrays are wrapped for this run only.
void Step::run_bound(const float* embeds, std::size_t hidden, const int64_t* positions, const int64_t* mask,
                     std::size_t s, std::size_t past, bool own_buffers, float* draft) {
    if (s == 0) throw std::invalid_argument("a run needs at least one new token");
    if (draft != nullptr && names_.draft.empty())
        throw std::invalid_argument("this decoder graph has no draft logits output");
    if (past + s > max_len_)
        throw std::invalid_argument("KV cache full: " + std::to_string(past) + " + " + std::to_string(s) +
                                    " tokens > max_len " + std::to_string(max_len_));
    const OrtApi* api = session_->runtime().api;
    const int64_t B = int64_t(batch_), S = int64_t(s), T = int64_t(past + s);
    constexpr int F32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, I64 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    Values temp{api, {}};  // handles of this run only
    auto once = [&](void* data, const std::vector<int64_t>& shape, int type, std::size_t bytes,
                    const std::string& name) {
        temp.v.push_back(make_value(data, shape, type, bytes, name));
        return temp.v.back();
    };
    in_vals_.clear();
    out_vals_.clear();
    const bool one = own_buffers && s == 1;
    if (one) {
        if (fixed_hidden_ != hidden) {  // the first step (or another table width): the embeds buffer is made for it
            if (fixed_[1]) api->ReleaseValue(fixed_[1]);
            fixed_[1] = nullptr;
            fixed_hidden_ = hidden;
        }
        in_vals_.push_back(kept(fixed_, 1, embeds1_.data(), {B, 1, int64_t(hidden)}, F32, 4, names_.embeds));
        in_vals_.push_back(kept(fixed_, 2, positions1_.data(), {3, B, 1}, I64, 8, names_.positions));
        in_vals_.push_back(kept(by_length_[0], std::size_t(T), mask_.data(), {B, T}, I64, 8, names_.mask));
    } else {
        in_vals_.push_back(once(const_cast<float*>(embeds), {B, S, int64_t(hidden)}, F32, 4, names_.embeds));
        in_vals_.push_back(once(const_cast<int64_t*>(positions), {3, B, S}, I64, 8, names_.positions));
        in_vals_.push_back(once(const_cast<int64_t*>(mask), {B, T}, I64, 8, names_.mask));
    }
    out_vals_.push_back(kept(fixed_, 0, logits_.data(), {B, int64_t(vocab_)}, F32, 4, names_.logits));

    struct Scatter { unsigned char* from; uintptr_t to; std::size_t row_bytes, row_stride; };
    std::vector<Scatter> scatters;
    std::vector<int64_t>& shape = shape_;
    auto bind = [&](std::size_t k) {
        const KvTensor& t = kv_[k];
        shape.clear();
        std::size_t row_bytes = 4;  // float32
        bool by_length = false;
        for (std::size_t i = 0; i < t.dims.size(); ++i) {
            shape.push_back(dim(t.dims[i], s, past));
            by_length |= t.dims[i] == kPast || t.dims[i] == kNew || t.dims[i] == kTotal;
            if (i) row_bytes *= std::size_t(shape.back());
        }
        const uintptr_t first = t.base + (t.at_past ? past * t.slot_bytes : 0);
        unsigned char* data = reinterpret_cast<unsigned char*>(first);
        std::vector<OrtValue*>& into = t.output ? out_vals_ : in_vals_;
        if (batch_ > 1 && t.row_stride != row_bytes) {  // rows not adjacent: gathered / scattered through scratch
            std::vector<unsigned char>& buf = scratch_[k];
            buf.resize(row_bytes * batch_);
            if (t.output) {
                scatters.push_back({buf.data(), first, row_bytes, t.row_stride});
            } else {
                for (std::size_t b = 0; b < batch_; ++b)
                    std::memcpy(buf.data() + b * row_bytes, reinterpret_cast<const void*>(first + b * t.row_stride),
                                row_bytes);
            }
            into.push_back(once(buf.data(), shape, F32, 4, t.name));
        } else if (!by_length) {
            into.push_back(kept(fixed_, 3 + k, data, shape, F32, 4, t.name));
        } else if (s == 1) {
            into.push_back(kept(by_length_[1 + k], past, data, shape, F32, 4, t.name));
        } else {
            into.push_back(once(data, shape, F32, 4, t.name));
        }
    };
    for (std::size_t k : kv_in_) bind(k);
    for (std::size_t k : kv_out_) bind(k);
    const bool drafts = draft != nullptr && s > 1;
    if (drafts) {  // bound for this run only: a one-token step leaves the output unrequested
        out_names_.push_back(names_.draft.c_str());
        out_vals_.push_back(once(draft, {B, S - 1, int64_t(vocab_)}, F32, 4, names_.draft));
    }
    const bool recording = session_->recording();
    const int64_t w0 = wall_ns(), c0 = recording ? thread_cpu_ns() : 0;
    OrtStatus* status = api->Run(session_->get(), nullptr, in_names_.data(), in_vals_.data(), in_vals_.size(),
                                 out_names_.data(), out_vals_.size(), out_vals_.data());
    last_run_ns_ = wall_ns() - w0;
    if (drafts) out_names_.pop_back();
    if (recording) session_->note_run(last_run_ns_, thread_cpu_ns() - c0);
    if (status != nullptr)  // the message is only built when it is needed
        check(api, status, "decoder run (batch " + std::to_string(batch_) + ", " + std::to_string(s) +
                               " new tokens, past " + std::to_string(past) + ")");
    for (const Scatter& sc : scatters)
        for (std::size_t b = 0; b < batch_; ++b)
            std::memcpy(reinterpret_cast<void*>(sc.to + b * sc.row_stride), sc.from + b * sc.row_bytes, sc.row_bytes);
}

void Step::feed(const EmbedTable& table, const int64_t* ids, std::size_t s, int64_t* next_pos, int64_t* mask,
                std::size_t width, std::size_t length, float* draft) {
    if (length + s > width) throw std::invalid_argument("attention mask too narrow for the fed tokens");
    if (length + s > max_len_)
        throw std::invalid_argument("KV cache full: " + std::to_string(length) + " + " + std::to_string(s) +
                                    " tokens > max_len " + std::to_string(max_len_));
    const std::size_t B = batch_, T = length + s;
    for (std::size_t b = 0; b < B; ++b) std::fill(mask + b * width + length, mask + b * width + T, int64_t(1));
    if (s == 1) {  // the decode step: the step's own buffers, whose tensor handles are kept
        if (embeds1_.size() != B * table.hidden) embeds1_.assign(B * table.hidden, 0.f);
        gather_embeddings(table, ids, B, embeds1_.data());
        for (std::size_t k = 0; k < 3; ++k) std::copy(next_pos, next_pos + B, positions1_.data() + k * B);
        for (std::size_t b = 0; b < B; ++b) std::copy(mask + b * width, mask + b * width + T, mask_.data() + b * T);
        run_bound(embeds1_.data(), table.hidden, positions1_.data(), mask_.data(), 1, length, true);
    } else {
        embeds_.resize(B * s * table.hidden);
        gather_embeddings(table, ids, B * s, embeds_.data());
        positions_.resize(3 * B * s);
        for (std::size_t k = 0; k < 3; ++k)
            for (std::size_t b = 0; b < B; ++b)
                for (std::size_t i = 0; i < s; ++i) positions_[(k * B + b) * s + i] = next_pos[b] + int64_t(i);
        const int64_t* m = mask;
        if (B > 1 && width != T) {  // rows of the (B, width) mask are not adjacent at width T
            for (std::size_t b = 0; b < B; ++b)
                std::copy(mask + b * width, mask + b * width + T, mask_.data() + b * T);
            m = mask_.data();
        }
        run_bound(embeds_.data(), table.hidden, positions_.data(), m, s, length, false, draft);
    }
    for (std::size_t b = 0; b < B; ++b) next_pos[b] += int64_t(s);
}

bool text_clean(const TokenText& text, int64_t token) {
    return token >= 0 && std::size_t(token) < text.vocab && text.clean[token] != 0;
}

bool feed_token_text(const TokenText& text, tam::StreamDecoder& stream, int64_t token) {
    if (!text_clean(text, token)) throw std::logic_error("feed_token_text: token " + std::to_string(token) +
                                                         " has no clean text (check text_clean first)");
    const int64_t a = text.offsets[token], b = text.offsets[token + 1];
    if (b <= a) return false;  // no text: the detokenizer emits nothing and the stream is not fed
    stream.feed(std::string_view(reinterpret_cast<const char*>(text.bytes + a), std::size_t(b - a)));
    return stream.closed();
}

std::size_t Step::loop(const LoopConfig& cfg, LoopState& st, const EmbedTable& table, int64_t* next_pos,
                       int64_t* mask, std::size_t width, std::size_t* length, int64_t* out_ids, int64_t* timings,
                       std::size_t* forwards, bool* handed_back) {
    if (cfg.sampler == nullptr) throw std::invalid_argument("loop needs a sampler");
    const std::size_t B = batch_;
    tam::StreamDecoder* const* streams = st.mask_stream;
    if (streams != nullptr && std::any_of(streams, streams + B, [](tam::StreamDecoder* d) { return d != nullptr; }))
        if (cfg.text == nullptr || handed_back == nullptr)
            throw std::invalid_argument("rows with a mask stream need the token text table and handed_back");
    if (handed_back) *handed_back = false;
    auto is_eos = [&](int64_t token) { return std::find(cfg.eos, cfg.eos + cfg.n_eos, token) != cfg.eos + cfg.n_eos; };
    std::vector<int64_t> ids(B), next(B);
    std::size_t steps = 0;
    sampling::LogitsView all{logits_.data(), sampling::DType::F32, B, vocab_};
    // The Python loop's order per step (generate.py, _decode and _accept): sample every row, then per running row
    // the empty-mask score, the end-of-sequence check, the append, the Text-as-Mask stop and the length check; then
    // one forward.
    while (steps < cfg.max_steps) {
        if (std::all_of(st.finish, st.finish + B, [](uint8_t f) { return f != 0; })) break;
        cfg.sampler->sample(all, {}, {}, cfg.rng, ids.data(), nullptr);
        if (streams != nullptr) {
            for (std::size_t b = 0; b < B; ++b) {
                if (st.finish[b] || streams[b] == nullptr || is_eos(ids[b]) || text_clean(*cfg.text, ids[b]))
                    continue;
                // A token the caller's detokenizer may hold back: the caller takes this step, with these ids.
                std::copy(ids.begin(), ids.end(), out_ids + steps * B);
                *handed_back = true;
                return steps;
            }
        }
        for (std::size_t b = 0; b < B; ++b) {
            out_ids[steps * B + b] = -1;
            next[b] = cfg.pad;
            if (st.finish[b]) continue;
            const int64_t token = ids[b];
            int64_t& pos = st.score_pos[b];
            if (pos >= 0) {
                const int64_t target = cfg.score_target[pos];
                float lp = 0.f;
                sampling::LogitsView row{logits_.data() + b * vocab_, sampling::DType::F32, 1, vocab_};
                sampling::log_softmax_at(row, &target, 1.f, &lp);
                st.score_logp[b] += double(lp);
                pos = (token != target || std::size_t(pos + 1) == cfg.score_len) ? -1 : pos + 1;
            }
            if (is_eos(token)) {
                st.finish[b] = 1;
                continue;
            }
            out_ids[steps * B + b] = next[b] = token;
            ++st.generated[b];
            if (streams != nullptr && streams[b] != nullptr && feed_token_text(*cfg.text, *streams[b], token)) {
                st.finish[b] = 3;
                continue;
            }
            if (std::size_t(st.generated[b]) >= cfg.max_new) st.finish[b] = 2;
        }
        ++steps;
        if (std::all_of(st.finish, st.finish + B, [](uint8_t f) { return f != 0; })) break;
        if (*length + 1 > max_len_) {
            for (std::size_t b = 0; b < B; ++b)
                if (!st.finish[b]) st.finish[b] = 2;
            break;
        }
        const int64_t t0 = wall_ns();
        feed(table, next.data(), 1, next_pos, mask, width, *length);
        if (timings) {
            timings[2 * *forwards] = wall_ns() - t0;
            timings[2 * *forwards + 1] = last_run_ns_;
        }
        *length += 1;
        *forwards += 1;
    }
    return steps;
}

}  // namespace omniad::ort
