// The decoder's decode step over ONNX Runtime's C API: bind, run, advance the cache position, sample, check the
// stop conditions, so a run of tokens needs no Python.
//
// Callers must know:
// - No link-time dependency: Runtime::load dlopens a library that exports OrtGetApiBase (the Python wheel's
//   capi/libonnxruntime*.so, found by the Python side) and asks for API version 20 (onnxruntime >= 1.20).
// - The KV cache is host memory owned by the caller; a Step binds it by address as its KvTensor descriptions say
//   (generic over the layout: BSHD slices written at slot P, or whole BNSH buffers shared by past and present).
// - Errors throw std::runtime_error (ONNX Runtime's message) or std::invalid_argument (bad arguments); the sampler's
//   NaN / +inf check throws std::invalid_argument as in sampling.hpp.
// - Threads: a Session may run from several threads at once (ONNX Runtime allows it); a Step belongs to one KV cache
//   and is used by one thread at a time.
// - A Step makes its tensor handles (OrtValue) once and keeps them: the fixed ones (logits, the single-token embeds
//   and positions over the step's own buffers, whole-buffer KV tensors) at the first step, and those whose shape
//   follows the cache length (BSHD past/new slices, the mask) once per length on first use, so a pooled cache's
//   later sequences only look them up. Multi-token runs (prefill, forced runs) and gathered batch rows still wrap
//   their tensors per run.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "omniad/sampling.hpp"
#include "omniad/tam.hpp"

struct OrtApi;
struct OrtValue;
struct OrtEnv;
struct OrtSession;
struct OrtMemoryInfo;

namespace omniad::ort {

class Runtime {
public:
    // The C API of the library at `path` (kept loaded for the process); one Runtime per path.
    static std::shared_ptr<Runtime> load(const std::string& path);
    const OrtApi* api = nullptr;
    OrtEnv* env = nullptr;
    OrtMemoryInfo* cpu = nullptr;
    std::string path;
};

struct SessionConfig {
    int threads = 0;      // intra-op threads; 0 = ONNX Runtime's default
    int optimization = 99;  // GraphOptimizationLevel: 0 disable, 1 basic, 2 extended, 99 all
    bool mem_pattern = true;
    bool spinning = false;  // intra-op threads spin between ops: faster steps, a core busy while it waits
};

class Session {
public:
    Session(std::shared_ptr<Runtime> runtime, const std::string& model, const SessionConfig& config);
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    const std::vector<std::string>& inputs() const { return inputs_; }
    const std::vector<std::string>& outputs() const { return outputs_; }
    const Runtime& runtime() const { return *runtime_; }
    OrtSession* get() const { return session_; }

    // Run timings for benchmarks: (wall ns, thread CPU ns) of each run while recording is on (the thread CPU clock
    // is a system call, so it is read only then).
    void record(bool on);
    bool recording() const { return recording_.load(std::memory_order_relaxed); }
    void note_run(int64_t wall_ns, int64_t cpu_ns);
    std::vector<std::pair<int64_t, int64_t>> take_runs();

private:
    std::shared_ptr<Runtime> runtime_;
    OrtSession* session_ = nullptr;
    std::vector<std::string> inputs_, outputs_;
    std::mutex mu_;
    std::atomic<bool> recording_{false};
    std::vector<std::pair<int64_t, int64_t>> runs_;
};

// A dimension of a bound tensor: a constant >= 0 or one of the step's sizes.
enum Dim : int64_t { kBatch = -1, kPast = -2, kNew = -3, kTotal = -4 };

// One KV tensor bound per step. Row b of the tensor starts at base + b * row_stride + first_slot * slot_bytes,
// first_slot = past length when at_past, else 0. When the rows are not adjacent (batch > 1 and row_stride larger
// than a row of the tensor) an input is gathered into scratch and an output scattered back after the run.
struct KvTensor {
    std::string name;
    bool output = false;
    std::vector<int64_t> dims;  // constants or Dim codes; dims[0] is the batch
    uintptr_t base = 0;
    std::size_t row_stride = 0;  // bytes between batch rows of the buffer
    std::size_t slot_bytes = 0;  // bytes per cache slot within a row
    bool at_past = false;
};

struct EmbedTable {
    const void* data = nullptr;
    bool f16 = false;
    std::size_t rows = 0, hidden = 0;
};

struct Names {
    std::string embeds = "inputs_embeds", positions = "position_ids", mask = "attention_mask", logits = "logits";
    std::string draft;  // the graph's draft_logits output; empty: it has none
};

// Each token's text as bytes, for the Text-as-Mask stop check inside the loop. `clean[t]`: the token's text is whole
// UTF-8 on its own, so an incremental detokenizer emits exactly these bytes for it (byte-level BPE); a row that
// samples any other token hands the step back to the caller's detokenizer.
struct TokenText {
    const uint8_t* bytes = nullptr;
    const int64_t* offsets = nullptr;  // vocab + 1: token t is bytes[offsets[t], offsets[t + 1])
    const uint8_t* clean = nullptr;
    std::size_t vocab = 0;
};

// What the token loop carries between calls, per row (arrays of `batch`, owned by the caller).
struct LoopState {
    uint8_t* finish = nullptr;      // 0 running, 1 end of sequence (not appended), 2 length, 3 mask closed
    int64_t* generated = nullptr;   // tokens appended so far
    int64_t* score_pos = nullptr;   // empty-mask score: next target index, -1 when inactive
    double* score_logp = nullptr;   // its accumulated log-probability
    // Text-as-Mask stop per row (null, or an entry null: none): each appended token's text is fed to it, and the
    // row finishes (3) when it closes. Needs LoopConfig::text.
    tam::StreamDecoder* const* mask_stream = nullptr;
};

struct LoopConfig {
    const sampling::Sampler* sampler = nullptr;
    sampling::Rng* rng = nullptr;  // null for greedy
    const int64_t* eos = nullptr;
    std::size_t n_eos = 0;
    int64_t pad = 0;
    std::size_t max_new = 0;  // per row
    const int64_t* score_target = nullptr;  // the empty-mask token ids (shared by every row)
    std::size_t score_len = 0;
    std::size_t max_steps = 0;  // sampling steps this call may take
    const TokenText* text = nullptr;  // required when any row has a mask stream
};

// The loop's text handling of a row with a mask stream (exposed for unit tests): whether it can feed a token's text
// itself (in the table and clean), and feeding it (-> the stream closed).
bool text_clean(const TokenText& text, int64_t token);
bool feed_token_text(const TokenText& text, tam::StreamDecoder& stream, int64_t token);

// One KV cache's decode state: its tensor descriptions, scratch, logits buffer.
class Step {
public:
    Step(std::shared_ptr<Session> session, std::size_t batch, std::size_t vocab, std::size_t max_len,
         std::vector<KvTensor> kv, Names names = {});
    std::size_t batch() const { return batch_; }
    std::size_t vocab() const { return vocab_; }
    float* logits() { return logits_.data(); }
    int64_t last_run_ns() const { return last_run_ns_; }  // wall time of the latest session run

    // One run on caller-made inputs: embeds (B, S, hidden), positions (3, B, S), mask (B, P + S), all contiguous.
    // draft: as for feed.
    void run(const float* embeds, std::size_t hidden, const int64_t* positions, const int64_t* mask, std::size_t s,
             std::size_t past, float* draft = nullptr);

    // Feeds token ids (B, S) at each row's next position: the embeddings gathered from `table`, positions
    // next_pos[b] + i (next_pos advances by S), mask[:, length:length + S] set to 1 in the caller's (B, width) mask.
    // draft: when not null (and S > 1), receives the logits of the positions before the last, (B, S - 1, vocab),
    // from the graph's draft output (names.draft), so drafted tokens fed in this run can be checked.
    void feed(const EmbedTable& table, const int64_t* ids, std::size_t s, int64_t* next_pos, int64_t* mask,
              std::size_t width, std::size_t length, float* draft = nullptr);

    // Samples from the current logits and feeds the tokens back until every row has finished, the cache is full or
    // max_steps tokens were sampled. Writes the appended token per (step, row) to out_ids (-1: none) and, when
    // timings is not null, (feed ns, run ns) per forward. *length advances per forward. Returns the steps sampled.
    // When a row with a mask stream samples a token whose text the loop cannot feed (not text_clean), the step is
    // not taken: its sampled ids (every row's) are written to out_ids at the returned step index, *handed_back is
    // set, and the caller finishes that step itself (the rows' state is as before it).
    std::size_t loop(const LoopConfig& cfg, LoopState& st, const EmbedTable& table, int64_t* next_pos, int64_t* mask,
                     std::size_t width, std::size_t* length, int64_t* out_ids, int64_t* timings, std::size_t* forwards,
                     bool* handed_back = nullptr);

    ~Step();
    Step(const Step&) = delete;
    Step& operator=(const Step&) = delete;

private:
    int64_t dim(int64_t d, std::size_t s, std::size_t past) const;
    void run_bound(const float* embeds, std::size_t hidden, const int64_t* positions, const int64_t* mask,
                   std::size_t s, std::size_t past, bool own_buffers, float* draft = nullptr);
    OrtValue* make_value(void* data, const std::vector<int64_t>& shape, int type, std::size_t element_bytes,
                         const std::string& name) const;
    OrtValue* kept(std::vector<OrtValue*>& slots, std::size_t at, void* data, const std::vector<int64_t>& shape,
                   int type, std::size_t element_bytes, const std::string& name);

    std::shared_ptr<Session> session_;
    std::size_t batch_, vocab_, max_len_;
    std::vector<KvTensor> kv_;
    Names names_;
    std::vector<float> logits_;
    std::vector<std::vector<unsigned char>> scratch_;  // per KV tensor, used when its rows are not adjacent
    std::vector<float> embeds_, embeds1_;          // embeds1_, positions1_: one token per row, bound for good
    std::vector<int64_t> positions_, positions1_;
    std::vector<int64_t> mask_;  // batch * max_len, allocated once (its address is bound)
    int64_t last_run_ns_ = 0;
    // Tensor handles kept for the step's life (see the header's notes). The names are in run order: embeds,
    // positions, mask, then the KV inputs; logits, then the KV outputs.
    std::vector<const char*> in_names_, out_names_;
    std::vector<std::size_t> kv_in_, kv_out_;  // indices into kv_ in that order
    std::vector<OrtValue*> fixed_;             // logits, embeds (one token), positions (one token), one per KV tensor
    std::vector<std::vector<OrtValue*>> by_length_;  // mask per total length; per KV tensor per past length
    std::size_t fixed_hidden_ = 0;
    std::vector<OrtValue*> in_vals_, out_vals_;  // the run's arguments, reused
    std::vector<int64_t> shape_;                 // a KV tensor's shape, reused
};

// Fills (B, S, hidden) float32 from table rows; throws std::invalid_argument for an id outside the table.
void gather_embeddings(const EmbedTable& table, const int64_t* ids, std::size_t n, float* out);

}  // namespace omniad::ort
