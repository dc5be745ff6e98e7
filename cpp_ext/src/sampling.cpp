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

inline uint32_t float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// exp(t) for t <= 0, t = -inf -> 0. Cody-Waite reduction + degree-7 polynomial: relative error < 2e-7.
// The vector version below performs the same operations in the same order, so both give identical results.
constexpr float kLog2e = 1.44269504f, kMagic = 12582912.f, kLn2Hi = 0.693145752f, kLn2Lo = 1.42860677e-6f;
constexpr float kExpFloor = -87.f;

inline float poly_exp(float r) {
    float p = 1.f / 5040;
    p = p * r + 1.f / 720;
    p = p * r + 1.f / 120;
    p = p * r + 1.f / 24;
    p = p * r + 1.f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    return p * r + 1.f;
}

inline float exp_nonpos(float t) {
    const float tc = t < kExpFloor ? kExpFloor : t;
    const float k = (tc * kLog2e + kMagic) - kMagic;  // round to nearest integer
    const float r = (tc - k * kLn2Hi) - k * kLn2Lo;
    const float scale = bits_float(uint32_t(int32_t(k) + 127) << 23);
    return t < kExpFloor ? 0.f : poly_exp(r) * scale;
}

#if defined(__GNUC__) && !defined(OMNIAD_NO_VECTORS)
// GCC/Clang generic vectors: lowered to SSE2/AVX2 (per clone) on x86-64 and NEON on aarch64. The helpers are
// always inlined, so each clone compiles them for its own instruction set (and no vector crosses a call: -Wpsabi).
#pragma GCC diagnostic ignored "-Wpsabi"
#define OMNIAD_VECTORS 1
#define OMNIAD_INLINE inline __attribute__((always_inline))
typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

OMNIAD_INLINE f32x8 splat(float v) { return f32x8{v, v, v, v, v, v, v, v}; }
OMNIAD_INLINE i32x8 splat_i(int32_t v) { return i32x8{v, v, v, v, v, v, v, v}; }
OMNIAD_INLINE f32x8 load8(const float* p) { f32x8 v; std::memcpy(&v, p, sizeof v); return v; }
OMNIAD_INLINE void store8(float* p, f32x8 v) { std::memcpy(p, &v, sizeof v); }
OMNIAD_INLINE f32x8 select(i32x8 mask, f32x8 a, f32x8 b) { return (f32x8)(((i32x8)a & mask) | ((i32x8)b & ~mask)); }
OMNIAD_INLINE bool any(i32x8 m) {
    uint64_t w[4];
    std::memcpy(w, &m, sizeof w);
    return (w[0] | w[1] | w[2] | w[3]) != 0;
}

OMNIAD_INLINE f32x8 exp_nonpos8(f32x8 t) {
    const i32x8 under = t < splat(kExpFloor);
    const f32x8 tc = select(under, splat(kExpFloor), t);
    const f32x8 k = (tc * kLog2e + kMagic) - kMagic;
    const f32x8 r = (tc - k * kLn2Hi) - k * kLn2Lo;
    f32x8 p = splat(1.f / 5040);
    p = p * r + 1.f / 720;
    p = p * r + 1.f / 120;
    p = p * r + 1.f / 24;
    p = p * r + 1.f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    const f32x8 scale = (f32x8)((__builtin_convertvector(k, i32x8) + 127) << 23);
    return (f32x8)((i32x8)(p * scale) & ~under);
}
#endif

inline int lowest_bit(uint32_t v) {
#if defined(__GNUC__)
    return __builtin_ctz(v);
#else
    int i = 0;
    while (!(v & 1u)) v >>= 1, ++i;
    return i;
#endif
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
    // One pass in blocks: each block's maximum by vector max (no index tracking); a block that beats the best so
    // far is remembered, and only that block is searched again for the first index holding the maximum.
    float best = -kInf;
    std::size_t best_block = n, i = 0;
    uint32_t any_bad = 0;
#ifdef OMNIAD_VECTORS
    constexpr std::size_t kBlock = 512;
    const f32x8 inf = splat(kInf);
    i32x8 nonfinite = {};
    for (; i + kBlock <= n; i += kBlock) {
        f32x8 m0 = splat(-kInf), m1 = m0, m2 = m0, m3 = m0;  // four chains keep the loads in flight
        for (std::size_t k = i; k < i + kBlock; k += 32) {
            const f32x8 v0 = load8(x + k), v1 = load8(x + k + 8), v2 = load8(x + k + 16), v3 = load8(x + k + 24);
            m0 = select(v0 > m0, v0, m0);
            m1 = select(v1 > m1, v1, m1);
            m2 = select(v2 > m2, v2, m2);
            m3 = select(v3 > m3, v3, m3);
            nonfinite |= ~(v0 < inf) | ~(v1 < inf) | ~(v2 < inf) | ~(v3 < inf);
        }
        m0 = select(m1 > m0, m1, m0);
        m2 = select(m3 > m2, m3, m2);
        m0 = select(m2 > m0, m2, m0);
        float bm = m0[0];
        for (int j = 1; j < 8; ++j) bm = m0[j] > bm ? m0[j] : bm;
        if (bm > best) best = bm, best_block = i;
    }
    any_bad = any(nonfinite);
#endif
    std::size_t best_at = n;
    for (; i < n; ++i) {
        any_bad |= uint32_t(!(x[i] < kInf));
        if (x[i] > best) best = x[i], best_at = i;
    }
    *bad = any_bad != 0;
    if (best == -kInf) return 0;  // everything -inf: the caller reports it
    if (best_at == n)
        for (best_at = best_block; x[best_at] != best;) ++best_at;
    return best_at;
}

std::size_t masked_argmax(const float* x, std::size_t n, const uint32_t* words) {
    float best = -kInf;
    std::size_t best_at = n;
    for (std::size_t w = 0; w * 32 < n; ++w) {
        uint32_t bits = words[w];
        if (w * 32 + 32 > n) bits &= (1u << (n - w * 32)) - 1u;  // ignore bits past the vocabulary
        while (bits) {
            const std::size_t i = w * 32 + std::size_t(lowest_bit(bits));
            if (x[i] > best) best = x[i], best_at = i;
            bits &= bits - 1;
        }
    }
    return best_at;
}

OMNIAD_CLONES double exp_shifted(const float* x, std::size_t n, float shift, float scale, float* e) {
    double sum = 0;
    std::size_t i = 0;
#ifdef OMNIAD_VECTORS
    // Float lanes summed over chunks of 1024 values, chunks summed in double: accurate and vector-friendly.
    const std::size_t full = n - n % 8;
    while (i < full) {
        const std::size_t end = std::min(full, i + 1024);
        f32x8 acc = {};
        for (; i < end; i += 8) {
            const f32x8 v = exp_nonpos8((load8(x + i) - shift) * scale);
            store8(e + i, v);
            acc += v;
        }
        for (int j = 0; j < 8; ++j) sum += double(acc[j]);
    }
#endif
    for (; i < n; ++i) sum += double(e[i] = exp_nonpos((x[i] - shift) * scale));
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
    std::size_t i = 0;
#ifdef OMNIAD_VECTORS
    // The scalar conversion above with selects instead of branches, 8 values at a time.
    typedef uint16_t u16x8 __attribute__((vector_size(16)));
    const i32x8 exp_mask = splat_i(0x0f800000), inf_exp = exp_mask;
    for (; i + 8 <= n; i += 8) {
        u16x8 raw;
        std::memcpy(&raw, h + i, sizeof raw);
        const i32x8 v = __builtin_convertvector(raw, i32x8);
        const i32x8 sign = (v & 0x8000) << 16;
        i32x8 o = (v & 0x7fff) << 13;
        const i32x8 exp = o & exp_mask;
        o += (127 - 15) << 23;
        const i32x8 is_special = exp == inf_exp, is_small = exp == 0;
        const i32x8 special = o + ((128 - 16) << 23);
        const i32x8 small = (i32x8)((f32x8)(o + (1 << 23)) - splat(bits_float(113u << 23)));
        o = (special & is_special) | (small & is_small) | (o & ~(is_special | is_small));
        store8(out + i, (f32x8)(o | sign));
    }
#endif
    for (; i < n; ++i) out[i] = half_to_float(h[i]);
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
    // Below 1e-4 the scaled logits of the best token would overflow into NaN; such runs want greedy anyway.
    if (!std::isfinite(c.temperature) || !(c.temperature == 0.f || c.temperature >= 1e-4f))
        fail("temperature must be 0 (greedy) or a finite number >= 1e-4, got " + std::to_string(c.temperature));
    if (c.top_k < 0) fail("top_k must be >= 0 (0 = off), got " + std::to_string(c.top_k));
    if (!(c.top_p > 0.f && c.top_p <= 1.f)) fail("top_p must be in (0, 1] (1 = off), got " + std::to_string(c.top_p));
    if (!(c.min_p >= 0.f && c.min_p < 1.f)) fail("min_p must be in [0, 1) (0 = off), got " + std::to_string(c.min_p));
    if (!(c.repetition_penalty > 0.f) || !std::isfinite(c.repetition_penalty))
        fail("repetition_penalty must be a finite number > 0 (1 = off), got " + std::to_string(c.repetition_penalty));
}

Sampler::Sampler(Config config) : config_(config) { validate(config_); }

namespace {
// Row scratch of one thread: grown once (152k floats), reused by every later call on that thread, contents never
// read before being written in the same call. thread_local keeps concurrent calls apart without a lock.
struct Workspace {
    std::vector<float> x;            // working logits of one row
    std::vector<float> e;            // exp((x - max) / T)
    std::vector<uint32_t> cand;      // candidate token ids, in token order
    std::vector<uint32_t> work;      // the same, reordered by selection
    std::vector<int64_t> prev;       // deduplicated previous tokens
};
thread_local Workspace tls_workspace;
}  // namespace

void Sampler::sample(const LogitsView& lv, const PreviousView& prev, const MaskView& mask, Rng* rng, int64_t* ids,
                     float* logprobs) const {
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
    if (!greedy && rng == nullptr) throw std::invalid_argument("rng is required when temperature > 0");
    Workspace& ws = tls_workspace;
    std::vector<float>& x_ = ws.x;
    std::vector<float>& e_ = ws.e;
    std::vector<uint32_t>& cand_ = ws.cand;
    std::vector<uint32_t>& work_ = ws.work;
    std::vector<int64_t>& prev_ = ws.prev;

    for (std::size_t b = 0; b < lv.batch; ++b) {
        const uint32_t* words = mask.words ? mask.words + b * mask.words_per_row : nullptr;
        const float* x;
        bool bad = false;
        // Stage 0: the row as float32, copied only when something must change it.
        if (lv.dtype == DType::F32 && !penalty && (!words || (greedy && !logprobs))) {
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
        if (greedy && !logprobs && words && x != x_.data()) {
            // Greedy ids under a mask need no copy: the best token if allowed, else the best over the set bits.
            if (!allowed(words, top)) top = kernels::masked_argmax(x, V, words);
        } else if (x == x_.data()) {
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
                    if (bits == 0) {
                        std::fill(x_.begin() + std::ptrdiff_t(w * 32), x_.begin() + std::ptrdiff_t(end), -kInf);
                        continue;
                    }
                    for (std::size_t i = w * 32; i < end; ++i)
                        if (!((bits >> (i & 31)) & 1u)) x_[i] = -kInf;
                }
            top = kernels::argmax(x, V, &bad);
        }
        if (top >= V || x[top] == -kInf)
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
            const double u = rng->uniform() * z;
            double acc = 0;
            chosen = top;
            for (std::size_t i = 0; i < V; ++i) {
                acc += double(e[i]);
                if (acc > u && e[i] > 0.f) { chosen = i; break; }
            }
        } else {
            // Stages 4-6 need tokens in descending order, but only the head. Collect the tokens with
            // y = (x - max) / T >= ythr, lowering ythr until the head surely holds what the stages keep: the k best
            // (top-k, whose mass top-p renormalises over), top_p of the mass, or y >= log(min_p).
            const bool use_k = c.top_k > 0 && std::size_t(c.top_k) < V;
            const bool min_p_bound = !use_k && c.min_p > 0.f;
            float ythr = min_p_bound ? std::log(c.min_p) - 1e-3f : -9.2f;  // e^-9.2 = 1e-4 of the best token
            for (;;) {
                const bool last = ythr < -87.f;
                const float xt = last ? -std::numeric_limits<float>::max() : xmax + ythr * c.temperature;
                cand_.clear();
                double mass = 0;
                for (std::size_t i = 0; i < V; ++i)
                    if (x[i] >= xt) {
                        cand_.push_back(uint32_t(i));
                        mass += double(e[i]);
                    }
                if (last || min_p_bound) break;
                if (use_k ? cand_.size() >= std::size_t(c.top_k) : mass >= double(c.top_p) * z) break;
                ythr *= 2.f;
            }
            auto before = [x](uint32_t p, uint32_t q) { return x[p] > x[q] || (x[p] == x[q] && p < q); };
            // What the stages keep is a prefix of the candidates in `before` order. Find its last member by
            // selection (no full sort: flat distributions keep most of the vocabulary), then draw over the
            // candidates in token order, so the draw does not depend on how the library orders its partitions.
            work_.assign(cand_.begin(), cand_.end());
            std::size_t n = work_.size();  // work_[0..n): the prefix, unordered
            if (use_k && std::size_t(c.top_k) < n) {  // stage 4: top-k
                std::nth_element(work_.begin(), work_.begin() + (c.top_k - 1), work_.end(), before);
                n = std::size_t(c.top_k);
            }
            if (c.top_p < 1.f) {  // stage 5: the shortest prefix whose mass reaches top_p of what top-k left
                double zs = z;
                if (use_k) {
                    zs = 0;
                    for (std::size_t i = 0; i < n; ++i) zs += double(e[work_[i]]);
                }
                const double target = double(c.top_p) * zs;
                // Its length is in (lo, hi]; work_[0..lo) are the lo best tokens, with mass acc < target.
                std::size_t lo = 0, hi = n;
                double acc = 0;
                while (hi - lo > 32) {
                    const std::size_t mid = lo + (hi - lo) / 2;
                    std::nth_element(work_.begin() + std::ptrdiff_t(lo), work_.begin() + std::ptrdiff_t(mid),
                                     work_.begin() + std::ptrdiff_t(hi), before);
                    double m = 0;
                    for (std::size_t i = lo; i < mid; ++i) m += double(e[work_[i]]);
                    if (acc + m >= target) {
                        hi = mid;
                    } else {
                        acc += m;
                        lo = mid;
                    }
                }
                std::sort(work_.begin() + std::ptrdiff_t(lo), work_.begin() + std::ptrdiff_t(hi), before);
                n = hi;
                for (std::size_t i = lo; i < hi; ++i)
                    if ((acc += double(e[work_[i]])) >= target) { n = i + 1; break; }
            }
            uint32_t last = work_[0];
            for (std::size_t i = 1; i < n; ++i)
                if (before(last, work_[i])) last = work_[i];
            // Stage 6, min-p: tokens below min_p times the best token's probability (e[top] = 1) are dropped.
            const float floor_e = c.min_p > 0.f ? c.min_p * e[top] : 0.f;
            auto kept = [&](uint32_t i) { return !before(last, i) && e[i] >= floor_e; };
            double zc = 0;
            for (uint32_t i : cand_)
                if (kept(i)) zc += double(e[i]);
            const double u = rng->uniform() * zc;
            double acc = 0;
            chosen = top;
            for (uint32_t i : cand_)
                if (kept(i) && (acc += double(e[i])) > u) { chosen = i; break; }
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
