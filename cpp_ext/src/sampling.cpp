// Sampler chain over full-vocabulary logits. The chain is kept as stages over one row workspace instead of
// llama.cpp's candidate array, because building a 152k-entry candidate array costs more than the whole chain here.
#include "omniad/sampling.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels.hpp"

namespace omniad::sampling {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int kBuckets = 255;      // histogram buckets of y = (x - max) / T, 1/8 nat wide; 255 = disallowed
constexpr float kPerNat = 8.f;
constexpr uint8_t kMasked = 255;

inline uint32_t float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// exp(t) for t <= 0, t = -inf -> 0. Cody-Waite reduction + degree-7 polynomial: relative error < 2e-7.
inline float exp_nonpos(float t) {
    const float tc = t < -87.f ? -87.f : t;
    const float k = (tc * 1.44269504f + 12582912.f) - 12582912.f;  // round to nearest integer
    const float r = (tc - k * 0.693145752f) - k * 1.42860677e-6f;
    float p = 1.f / 5040;
    p = p * r + 1.f / 720;
    p = p * r + 1.f / 120;
    p = p * r + 1.f / 24;
    p = p * r + 1.f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    const float scale = bits_float(uint32_t(int32_t(k) + 127) << 23);
    return t < -87.f ? 0.f : p * scale;
}

inline bool allowed(const uint32_t* words, std::size_t i) { return (words[i >> 5] >> (i & 31)) & 1u; }

[[noreturn]] void bad_logits(std::size_t row) {
    throw std::invalid_argument("logits row " + std::to_string(row) +
                                " contains NaN or +inf (expected finite values or -inf)");
}

}  // namespace

// ---- kernels -------------------------------------------------------------------------------------------------------

namespace kernels {

OMNIAD_CLONES std::size_t argmax(const float* x, std::size_t n, bool* bad) {
    constexpr int L = 16;  // independent lanes; the compiler turns each block into a few vector selects
    float m[L];
    int32_t at[L];
    uint32_t nonfinite[L];
    for (int j = 0; j < L; ++j) m[j] = -kInf, at[j] = j, nonfinite[j] = 0;
    const int32_t blocks = int32_t(n / L);
    for (int32_t b = 0; b < blocks; ++b) {
        const float* v = x + std::size_t(b) * L;
        for (int j = 0; j < L; ++j) {
            const bool gt = v[j] > m[j];
            m[j] = gt ? v[j] : m[j];
            at[j] = gt ? b * L + j : at[j];
            nonfinite[j] |= uint32_t(!(v[j] < kInf));
        }
    }
    float best = -kInf;
    std::size_t best_at = std::size_t(-1);
    uint32_t any_bad = 0;
    for (int j = 0; j < L; ++j) {
        any_bad |= nonfinite[j];
        if (m[j] > best || (m[j] == best && std::size_t(at[j]) < best_at)) best = m[j], best_at = std::size_t(at[j]);
    }
    for (std::size_t i = std::size_t(blocks) * L; i < n; ++i) {
        any_bad |= uint32_t(!(x[i] < kInf));
        if (x[i] > best) best = x[i], best_at = i;
    }
    if (best == -kInf) best_at = 0;  // everything -inf: the caller reports it
    *bad = any_bad != 0;
    return best_at;
}

OMNIAD_CLONES double exp_shifted(const float* x, std::size_t n, float shift, float scale, float* e) {
    constexpr int L = 8;
    double acc[L] = {};
    std::size_t i = 0;
    for (; i + L <= n; i += L)
        for (int j = 0; j < L; ++j) {
            e[i + j] = exp_nonpos((x[i + j] - shift) * scale);
            acc[j] += double(e[i + j]);
        }
    double sum = 0;
    for (; i < n; ++i) sum += double(e[i] = exp_nonpos((x[i] - shift) * scale));
    for (int j = 0; j < L; ++j) sum += acc[j];
    return sum;
}

float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t o = uint32_t(h & 0x7fffu) << 13;  // exponent and mantissa into place
    const uint32_t exp = o & 0x0f800000u;
    o += (127 - 15) << 23;                       // rebias
    if (exp == 0x0f800000u) return bits_float(sign | (o + ((128 - 16) << 23)));  // inf / nan
    if (exp == 0) return bits_float(sign | float_bits(bits_float(o + (1u << 23)) - bits_float(113u << 23)));
    return bits_float(sign | o);
}

OMNIAD_CLONES void half_to_float_n(const uint16_t* h, std::size_t n, float* out) {
    for (std::size_t i = 0; i < n; ++i) out[i] = half_to_float(h[i]);
}

}  // namespace kernels

// ---- generator -----------------------------------------------------------------------------------------------------

void Rng::reset(uint64_t seed) {
    for (uint64_t& s : s_) {  // splitmix64
        seed += 0x9e3779b97f4a7c15ull;
        uint64_t z = seed;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        s = z ^ (z >> 31);
    }
}

uint64_t Rng::next() {  // xoshiro256**
    auto rotl = [](uint64_t v, int k) { return (v << k) | (v >> (64 - k)); };
    const uint64_t out = rotl(s_[1] * 5, 7) * 9, t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return out;
}

double Rng::uniform() { return double(next() >> 11) * 0x1.0p-53; }

// ---- sampler -------------------------------------------------------------------------------------------------------

void validate(const Config& c) {
    auto fail = [](const std::string& what) { throw std::invalid_argument(what); };
    if (!(c.temperature >= 0.f) || !std::isfinite(c.temperature))
        fail("temperature must be a finite number >= 0 (0 = greedy), got " + std::to_string(c.temperature));
    if (c.top_k < 0) fail("top_k must be >= 0 (0 = off), got " + std::to_string(c.top_k));
    if (!(c.top_p > 0.f && c.top_p <= 1.f)) fail("top_p must be in (0, 1] (1 = off), got " + std::to_string(c.top_p));
    if (!(c.min_p >= 0.f && c.min_p < 1.f)) fail("min_p must be in [0, 1) (0 = off), got " + std::to_string(c.min_p));
    if (!(c.repetition_penalty > 0.f) || !std::isfinite(c.repetition_penalty))
        fail("repetition_penalty must be a finite number > 0 (1 = off), got " + std::to_string(c.repetition_penalty));
}

Sampler::Sampler(Config config, uint64_t seed) : config_(config), rng_(seed) { validate(config_); }

void Sampler::sample(const LogitsView& lv, const PreviousView& prev, const MaskView& mask, int64_t* ids,
                     float* logprobs) {
    const std::size_t V = lv.vocab;
    if (V == 0 || lv.batch == 0) throw std::invalid_argument("logits must have at least one row and one column");
    if (V > std::size_t(std::numeric_limits<int32_t>::max()))
        throw std::invalid_argument("logits vocabulary too large: " + std::to_string(V));
    if (mask.words && mask.words_per_row < (V + 31) / 32)
        throw std::invalid_argument("allowed_mask has " + std::to_string(mask.words_per_row) + " words per row, " +
                                    "expected ceil(V / 32) = " + std::to_string((V + 31) / 32));
    const Config& c = config_;
    const bool greedy = c.temperature == 0.f;
    const bool penalty = prev.ids && prev.per_row && c.repetition_penalty != 1.f;

    for (std::size_t b = 0; b < lv.batch; ++b) {
        const uint32_t* words = mask.words ? mask.words + b * mask.words_per_row : nullptr;
        const float* x;
        bool bad = false;
        // Stage 0: the row as float32, copied only when something must change it.
        if (lv.dtype == DType::F32 && !words && !penalty) {
            x = static_cast<const float*>(lv.data) + b * V;
        } else {
            x_.resize(V);
            if (lv.dtype == DType::F16) kernels::half_to_float_n(static_cast<const uint16_t*>(lv.data) + b * V, V, x_.data());
            else std::memcpy(x_.data(), static_cast<const float*>(lv.data) + b * V, V * sizeof(float));
            x = x_.data();
        }
        // The NaN check must see every logit, masked or not.
        std::size_t top = kernels::argmax(x, V, &bad);
        if (bad) bad_logits(b);
        if (x == x_.data()) {
            // Stage 1: repetition penalty over the distinct previous tokens.
            if (penalty) {
                prev_.assign(prev.ids + b * prev.per_row, prev.ids + (b + 1) * prev.per_row);
                std::sort(prev_.begin(), prev_.end());
                prev_.erase(std::unique(prev_.begin(), prev_.end()), prev_.end());
                for (int64_t t : prev_) {
                    if (t < 0) continue;
                    if (std::size_t(t) >= V)
                        throw std::invalid_argument("previous token id " + std::to_string(t) +
                                                    " is outside the vocabulary (V = " + std::to_string(V) + ")");
                    float& v = x_[std::size_t(t)];
                    v = v > 0.f ? v / c.repetition_penalty : v * c.repetition_penalty;
                }
            }
            // Stage 2: allowed-token mask.
            if (words)
                for (std::size_t w = 0; w * 32 < V; ++w) {
                    const uint32_t bits = words[w];
                    if (bits == 0xffffffffu) continue;
                    const std::size_t end = std::min(V, w * 32 + 32);
                    for (std::size_t i = w * 32; i < end; ++i)
                        if (!((bits >> (i & 31)) & 1u)) x_[i] = -kInf;
                }
            top = kernels::argmax(x, V, &bad);
        }
        if (x[top] == -kInf)
            throw std::invalid_argument("no allowed token in row " + std::to_string(b) +
                                        " (allowed_mask excludes every token with a finite logit)");
        const float xmax = x[top];
        if (greedy) {
            ids[b] = int64_t(top);
            if (logprobs) {
                e_.resize(V);
                logprobs[b] = float(-std::log(kernels::exp_shifted(x, V, xmax, 1.f, e_.data())));
            }
            continue;
        }
        // Stage 3: temperature, folded into the exponent.
        const float inv_t = 1.f / c.temperature;
        e_.resize(V);
        const double z = kernels::exp_shifted(x, V, xmax, inv_t, e_.data());
        const float* e = e_.data();
        std::size_t chosen;
        const bool truncate = (c.top_k > 0 && std::size_t(c.top_k) < V) || c.top_p < 1.f || c.min_p > 0.f;
        if (!truncate) {
            const double u = rng_.uniform() * z;
            double acc = 0;
            chosen = top;
            for (std::size_t i = 0; i < V; ++i) {
                acc += double(e[i]);
                if (acc > u && e[i] > 0.f) { chosen = i; break; }
            }
        } else {
            // Stages 4-6 need tokens in descending order, but only the head: a histogram of y finds a bucket
            // boundary that surely contains the top-k / top-p / min-p sets, and only that head is sorted.
            bucket_.resize(V);
            uint32_t count[kBuckets] = {};
            double mass[kBuckets] = {};
            for (std::size_t i = 0; i < V; ++i) {
                const float q = (xmax - x[i]) * inv_t * kPerNat;
                const uint8_t k = x[i] == -kInf ? kMasked : uint8_t(q < kBuckets - 1 ? q : kBuckets - 1);
                bucket_[i] = k;
                if (k != kMasked) ++count[k], mass[k] += double(e[i]);
            }
            // With top-k, top-p renormalises over the k best, whose mass needs all of them: cut at the k-th
            // token's bucket. Without, top-p needs mass top_p * z, found from the bucket masses.
            const bool use_k = c.top_k > 0;
            int cut = kBuckets - 1;
            if (use_k) {
                uint64_t n = 0;
                for (int k = 0; k < kBuckets; ++k)
                    if ((n += count[k]) >= uint64_t(c.top_k)) { cut = k; break; }
            } else if (c.top_p < 1.f) {
                double acc = 0;
                for (int k = 0; k < kBuckets; ++k)
                    if ((acc += mass[k]) >= double(c.top_p) * z) { cut = std::min(k + 1, kBuckets - 1); break; }  // +1: rounding slack
            }
            if (c.min_p > 0.f && !use_k) cut = std::min(cut, int(-std::log(c.min_p) * kPerNat) + 1);
            cand_.clear();
            for (std::size_t i = 0; i < V; ++i)
                if (bucket_[i] <= cut) cand_.push_back(uint32_t(i));
            auto before = [x](uint32_t a, uint32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
            std::size_t n = cand_.size();
            if (use_k && std::size_t(c.top_k) < n) {
                std::partial_sort(cand_.begin(), cand_.begin() + c.top_k, cand_.end(), before);
                n = std::size_t(c.top_k);  // stage 4: top-k
            } else {
                std::sort(cand_.begin(), cand_.end(), before);
            }
            if (c.top_p < 1.f) {  // stage 5: smallest head whose mass reaches top_p of what top-k left
                double zs = 0, acc = 0;
                if (use_k) {
                    for (std::size_t i = 0; i < n; ++i) zs += double(e[cand_[i]]);
                } else {
                    zs = z;
                }
                for (std::size_t i = 0; i < n; ++i)
                    if ((acc += double(e[cand_[i]])) >= double(c.top_p) * zs) { n = i + 1; break; }
            }
            if (c.min_p > 0.f) {  // stage 6: drop tokens below min_p times the best probability
                const float floor_e = c.min_p * e[cand_[0]];
                std::size_t keep = 1;
                while (keep < n && e[cand_[keep]] >= floor_e) ++keep;
                n = keep;
            }
            double zc = 0;
            for (std::size_t i = 0; i < n; ++i) zc += double(e[cand_[i]]);
            const double u = rng_.uniform() * zc;
            double acc = 0;
            chosen = cand_[0];
            for (std::size_t i = 0; i < n; ++i) {
                acc += double(e[cand_[i]]);
                if (acc > u) { chosen = cand_[i]; break; }
            }
        }
        ids[b] = int64_t(chosen);
        if (logprobs) logprobs[b] = float(double(x[chosen] - xmax) * inv_t - std::log(z));
    }
}

void log_softmax_at(const LogitsView& lv, const int64_t* ids, float temperature, float* out) {
    if (!(temperature > 0.f) || !std::isfinite(temperature))
        throw std::invalid_argument("temperature must be a finite number > 0, got " + std::to_string(temperature));
    const std::size_t V = lv.vocab;
    std::vector<float> row, e(V);
    for (std::size_t b = 0; b < lv.batch; ++b) {
        if (ids[b] < 0 || std::size_t(ids[b]) >= V)
            throw std::invalid_argument("ids[" + std::to_string(b) + "] = " + std::to_string(ids[b]) +
                                        " is outside the vocabulary (V = " + std::to_string(V) + ")");
        const float* x;
        if (lv.dtype == DType::F16) {
            row.resize(V);
            kernels::half_to_float_n(static_cast<const uint16_t*>(lv.data) + b * V, V, row.data());
            x = row.data();
        } else {
            x = static_cast<const float*>(lv.data) + b * V;
        }
        bool bad = false;
        const float m = x[kernels::argmax(x, V, &bad)];
        if (bad) bad_logits(b);
        if (m == -kInf) throw std::invalid_argument("logits row " + std::to_string(b) + " is all -inf");
        const double z = kernels::exp_shifted(x, V, m, 1.f / temperature, e.data());
        out[b] = float(double(x[ids[b]] - m) / temperature - std::log(z));
    }
}

void pack_bool_mask(const uint8_t* mask, std::size_t batch, std::size_t vocab, uint32_t* words) {
    const std::size_t per_row = (vocab + 31) / 32;
    for (std::size_t b = 0; b < batch; ++b) {
        const uint8_t* m = mask + b * vocab;
        uint32_t* w = words + b * per_row;
        for (std::size_t k = 0; k < per_row; ++k) {
            uint32_t bits = 0;
            const std::size_t end = std::min(vocab, k * 32 + 32);
            for (std::size_t i = k * 32; i < end; ++i) bits |= uint32_t(m[i] != 0) << (i & 31);
            w[k] = bits;
        }
    }
}

}  // namespace omniad::sampling
