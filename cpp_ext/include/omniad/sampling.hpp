// Token sampler over (B, V) logits, llama.cpp-style chain:
//   repetition penalty -> allowed-token mask -> temperature -> top-k -> top-p -> min-p -> draw
// (greedy argmax after the mask when temperature == 0).
//
// Callers must know:
// - Views are borrowed; nothing is retained after the call. Logits are never modified.
// - Invalid arguments and NaN/+inf logits throw std::invalid_argument with the argument's name.
// - Thread safety: a Sampler is an immutable configuration; `sample` is const and may be called from any number of
//   threads at once. The random state lives in an Rng the caller owns and passes per call (one per sequence or
//   decoding thread: an Rng is not thread-safe). Row scratch buffers are thread_local, grown once per thread, and
//   their contents never carry from one call to the next.
// - Log-probabilities are those of the chosen token under softmax(masked, penalised logits / T) over all allowed
//   tokens, before top-k/top-p/min-p truncation (T = 1 for greedy).
// - Determinism: the same seed, config and inputs give the same ids on every run of a build. The generator, the
//   uniform draw and the draw order (token order) are our own, not the standard library's; ties go to the lower
//   token id. Each sampled row consumes one draw; greedy consumes none.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace omniad::sampling {

enum class DType { F32, F16 };

struct LogitsView {
    const void* data = nullptr;
    DType dtype = DType::F32;
    std::size_t batch = 0, vocab = 0;  // row-major, contiguous
};

// Packed allowed-token bitmask: bit (i % 32) of word i / 32 set = token i allowed. words_per_row >= ceil(V / 32).
struct MaskView {
    const uint32_t* words = nullptr;  // null = everything allowed
    std::size_t words_per_row = 0;
};

// Previous tokens per row for the repetition penalty; negative ids are padding and ignored.
struct PreviousView {
    const int64_t* ids = nullptr;  // null = none
    std::size_t per_row = 0;
};

struct Config {
    float temperature = 0.f;  // 0 = greedy
    int top_k = 0;            // 0 = off
    float top_p = 1.f;        // 1 = off
    float min_p = 0.f;        // 0 = off
    float repetition_penalty = 1.f;  // 1 = off; >1 discourages repeats (positive logits / p, negative * p)
};

void validate(const Config& c);  // throws std::invalid_argument

// Small portable generator (xoshiro256** seeded through splitmix64).
class Rng {
public:
    explicit Rng(uint64_t seed = 0) { reset(seed); }
    void reset(uint64_t seed);
    uint64_t next();
    double uniform();  // [0, 1), 53 bits
private:
    uint64_t s_[4];
};

class Sampler {
public:
    explicit Sampler(Config config);
    const Config& config() const { return config_; }
    // ids: batch int64; logprobs: batch float32 or null (skips the normalising pass for greedy).
    // rng: the draw's generator; may be null for greedy (which draws nothing), required otherwise.
    void sample(const LogitsView& logits, const PreviousView& previous, const MaskView& mask, Rng* rng,
                int64_t* ids, float* logprobs) const;

private:
    Config config_;
};

// log softmax(logits[b] / temperature)[ids[b]] for each row (no mask, no penalty).
void log_softmax_at(const LogitsView& logits, const int64_t* ids, float temperature, float* out);

// Packs a (B, V) bool array into (B, ceil(V/32)) words.
void pack_bool_mask(const uint8_t* mask, std::size_t batch, std::size_t vocab, uint32_t* words);

// Kernels, exposed for the C++ tests and benchmarks. Not a stable API.
namespace kernels {
// Index of the first maximum of x[0..n); sets *bad when any value is NaN or +inf. n > 0.
std::size_t argmax(const float* x, std::size_t n, bool* bad);
// Index of the first maximum among tokens whose bit is set (words as in MaskView); n if none is above -inf.
std::size_t masked_argmax(const float* x, std::size_t n, const uint32_t* words);
// e[i] = exp((x[i] - shift) * scale), x = -inf -> 0; returns the sum in double. Relative error < 2e-7.
double exp_shifted(const float* x, std::size_t n, float shift, float scale, float* e);
float half_to_float(uint16_t h);
void half_to_float_n(const uint16_t* h, std::size_t n, float* out);
}  // namespace kernels

}  // namespace omniad::sampling
