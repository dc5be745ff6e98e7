// C++ unit tests of the native core (run by ctest). Expected values are worked out by hand in the comments.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "omniad/ort_decoder.hpp"
#include "omniad/sampling.hpp"
#include "omniad/tam.hpp"

static int failures = 0;
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            ++failures;                                                          \
        }                                                                        \
    } while (0)

template <class F>
static bool throws(F f) {
    try {
        f();
    } catch (const std::invalid_argument&) {
        return true;
    }
    return false;
}

using namespace omniad;

static tam::CodecSpec spec(tam::CodecKind kind, int g, std::vector<std::string> labels = {"others", "anomaly"}) {
    tam::CodecSpec s;
    s.kind = kind;
    s.grid = g;
    s.labels = std::move(labels);
    return s;
}

static void test_compact() {
    auto s = spec(tam::CodecKind::Compact, 4, {"others", "scratch", "crack"});
    std::vector<uint8_t> g(16, 0);
    CHECK(tam::encode(s, g.data()) == "none");
    // row 1: cols 1-2 scratch; row 2: col 0 scratch, col 3 crack
    g[1 * 4 + 1] = g[1 * 4 + 2] = 1;
    g[2 * 4 + 0] = 1;
    g[2 * 4 + 3] = 2;
    CHECK(tam::encode(s, g.data()) == "b bc;c aa crack: dd");
    auto d = tam::decode(s, "<seg>b bc;c aa crack: dd</seg>");
    CHECK(d.grid == g);
    CHECK(!d.repaired && d.complete);
    d = tam::decode(s, "none");
    CHECK(d.grid == std::vector<uint8_t>(16, 0) && d.complete && !d.repaired);
    d = tam::decode(s, "b zz");  // column beyond the grid
    CHECK(d.repaired && d.grid == std::vector<uint8_t>(16, 0));
}

static void test_coords() {
    auto s = spec(tam::CodecKind::Coords, 4);
    std::vector<uint8_t> g(16, 0);
    CHECK(tam::encode(s, g.data()) == "None");
    // row 1: cols 1-3; row 3: col 0 -> 1-indexed "(2,2)-(2,4), (4,1)"
    g[1 * 4 + 1] = g[1 * 4 + 2] = g[1 * 4 + 3] = 1;
    g[3 * 4 + 0] = 1;
    CHECK(tam::encode(s, g.data()) == "(2,2)-(2,4), (4,1)");
    auto d = tam::decode(s, "<seg>(2,2)-(2,4), (4,1)</seg>");
    CHECK(d.grid == g && !d.repaired && d.complete);
    d = tam::decode(s, "(5,1), (1,1)");  // row 5 is outside a 4-grid: dropped, the rest kept
    CHECK(d.repaired && d.grid[0] == 1);
    CHECK(throws([] { tam::validate(spec(tam::CodecKind::Coords, 4, {"others", "a", "b"})); }));
}

static void test_rle() {
    auto s = spec(tam::CodecKind::Rle, 4);
    std::vector<uint8_t> g(16, 0);
    g[5] = g[6] = 1;
    const std::string text = tam::encode(s, g.data());
    CHECK(text == "others *4\nothers *1| anomaly *2| others *1\nothers *4\nothers *4");
    auto d = tam::decode(s, "others *4\n others *1| anomaly *2| others *1\n others *4\n others *4");  // Text4Seg
    CHECK(d.grid == g && !d.repaired && d.complete);
    // Truncated: Text4Seg pads with the last value (here anomaly).
    d = tam::decode(s, "others *4\n others *1| anomaly *2");
    CHECK(d.repaired && !d.complete);
    for (int i = 5; i < 16; ++i) CHECK(d.grid[i] == 1);
    // Huge count: bounded, truncated to the grid.
    d = tam::decode(s, "anomaly *99999999999999999999999");
    CHECK(d.repaired && d.grid == std::vector<uint8_t>(16, 1));
}

static void test_stream() {
    auto s = spec(tam::CodecKind::Compact, 4);
    tam::StreamDecoder st(s);
    CHECK(st.feed("<seg>a ab;") == 1);
    CHECK(!st.closed());
    CHECK(st.feed("c b") == 1);
    CHECK(st.feed("b</s") == 1);
    CHECK(st.feed("eg> trailing text") == 4 && st.closed());
    auto d = st.result(false);
    CHECK(d.complete && !d.repaired);
    CHECK(d.grid[0] == 1 && d.grid[1] == 1 && d.grid[2 * 4 + 1] == 1 && d.grid[2] == 0);
    tam::StreamDecoder none(s);
    none.feed("no");
    CHECK(!none.closed());
    none.feed("ne");
    CHECK(none.closed());
}

static void test_garbage_bounded() {
    auto s = spec(tam::CodecKind::Rle, 16);
    std::string junk(5'000'000, 'x');
    auto d = tam::decode(s, junk);
    CHECK(d.repaired && d.grid.size() == 256);
    auto c = spec(tam::CodecKind::Compact, 16);
    d = tam::decode(c, std::string(1'000'000, ';') + "\xff\xfe b cd");
    CHECK(d.repaired && d.grid[16 + 2] == 1);
}

static void test_upsample() {
    const uint8_t g[4] = {0, 1, 2, 0};  // 2x2
    std::vector<uint8_t> out(4 * 6);
    tam::upsample_nearest(g, 2, 2, out.data(), 4, 6, false);
    // rows 0-1 -> grid row 0: cols 0-2 -> 0, cols 3-5 -> 1
    const uint8_t want[24] = {0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0, 2, 2, 2, 0, 0, 0};
    CHECK(std::memcmp(out.data(), want, 24) == 0);
    // smooth of a full grid stays full, of an empty grid stays empty
    const uint8_t full[4] = {1, 1, 1, 1}, empty[4] = {0, 0, 0, 0};
    tam::upsample_smooth(full, 2, 2, out.data(), 4, 6);
    for (uint8_t v : out) CHECK(v == 1);
    tam::upsample_smooth(empty, 2, 2, out.data(), 4, 6);
    for (uint8_t v : out) CHECK(v == 0);
}

static void test_mask_to_grid_and_components() {
    // 4x4 image -> 2x2 grid; cell (0,0) has 1 pixel of label 1 out of 4 (25%).
    std::vector<uint8_t> m(16, 0);
    m[0] = 1;
    uint8_t g[4];
    tam::mask_to_grid(m.data(), 4, 4, 2, 0.25f, g);
    CHECK(g[0] == 1 && g[1] == 0 && g[2] == 0 && g[3] == 0);
    tam::mask_to_grid(m.data(), 4, 4, 2, 0.3f, g);
    CHECK(g[0] == 0);
    // Two diagonal pixels: one component with 8-connectivity, two with 4.
    std::vector<uint8_t> img = {1, 0, 0, 1};
    auto c8 = tam::connected_components(img.data(), 2, 2, 8, nullptr);
    auto c4 = tam::connected_components(img.data(), 2, 2, 4, nullptr);
    CHECK(c8.label.size() == 1 && c8.pixels[0] == 2);
    CHECK(c8.box == std::vector<int32_t>({0, 0, 2, 2}));
    CHECK(c4.label.size() == 2);
    // U shape joins late: one component.
    std::vector<uint8_t> u = {1, 0, 1, 1, 0, 1, 1, 1, 1};
    auto cu = tam::connected_components(u.data(), 3, 3, 4, nullptr);
    CHECK(cu.label.size() == 1 && cu.pixels[0] == 7);
}

static void test_kernels() {
    using namespace sampling::kernels;
    std::vector<float> x(1000);
    for (int i = 0; i < 1000; ++i) x[i] = float(i % 97) * 0.01f;
    x[500] = 5.f;
    x[700] = 5.f;  // tie: first index wins
    bool bad = true;
    CHECK(argmax(x.data(), x.size(), &bad) == 500 && !bad);
    x[3] = NAN;
    argmax(x.data(), x.size(), &bad);
    CHECK(bad);
    // Against a plain loop on many sizes, with duplicated maxima placed across block boundaries.
    uint32_t state = 12345;
    auto next = [&] { return (state = state * 1664525u + 1013904223u) >> 8; };
    int wrong = 0;
    for (std::size_t n = 1; n < 3000; n += 37) {
        std::vector<float> v(n);
        for (float& f : v) f = float(next() % 1000);
        v[next() % n] = 2000.f;
        v[next() % n] = 2000.f;
        std::size_t want = 0;
        for (std::size_t i = 1; i < n; ++i)
            if (v[i] > v[want]) want = i;
        if (argmax(v.data(), n, &bad) != want || bad) ++wrong;
    }
    CHECK(wrong == 0);
    std::vector<float> ninf(700, -INFINITY);
    argmax(ninf.data(), ninf.size(), &bad);
    CHECK(!bad);
    ninf[650] = INFINITY;
    argmax(ninf.data(), ninf.size(), &bad);
    CHECK(bad);
    // exp against std::exp
    std::vector<float> t(200), e(200);
    for (int i = 0; i < 200; ++i) t[i] = -float(i) * 0.5f;
    double sum = exp_shifted(t.data(), t.size(), 0.f, 1.f, e.data());
    double want = 0;
    for (int i = 0; i < 200; ++i) {
        want += std::exp(double(t[i]));
        if (t[i] > -80) CHECK(std::fabs(e[i] - std::exp(double(t[i]))) <= 3e-7 * std::exp(double(t[i])));
    }
    CHECK(std::fabs(sum - want) < 1e-6 * want);
    // half: 1.0 = 0x3c00, -2.0 = 0xc000, smallest subnormal 2^-24 = 0x0001, inf = 0x7c00
    CHECK(half_to_float(0x3c00) == 1.f && half_to_float(0xc000) == -2.f);
    CHECK(half_to_float(0x0001) == std::ldexp(1.f, -24) && std::isinf(half_to_float(0x7c00)));
    // Scalar and vector conversions are exact on all 65536 halves (NaNs stay NaN).
    std::vector<uint16_t> all(65536);
    for (int i = 0; i < 65536; ++i) all[i] = uint16_t(i);
    std::vector<float> conv(65536);
    half_to_float_n(all.data(), all.size(), conv.data());
    int mismatches = 0;
    for (int i = 0; i < 65536; ++i) {
        // IEEE half by its definition: sign, 5-bit exponent (bias 15), 10-bit fraction.
        const int sign = i >> 15, exp = (i >> 10) & 31, frac = i & 1023;
        double mag = exp == 0 ? std::ldexp(frac / 1024.0, -14)
                   : exp == 31 ? (frac ? NAN : INFINITY)
                               : std::ldexp(1.0 + frac / 1024.0, exp - 15);
        const float want = float(sign ? -mag : mag);
        const float scalar = half_to_float(uint16_t(i));
        auto same = [&](float a) { return a == want || (std::isnan(a) && std::isnan(want)); };
        if (!same(conv[i]) || !same(scalar)) ++mismatches;
    }
    CHECK(mismatches == 0);
}

static void test_sampler() {
    // Greedy with a mask: best allowed is token 2.
    const float logits[5] = {1.f, 9.f, 3.f, 2.f, -1.f};
    sampling::LogitsView lv{logits, sampling::DType::F32, 1, 5};
    uint32_t words = 0b11101;  // token 1 disallowed
    int64_t id = -1;
    float lp = 0;
    const sampling::Sampler greedy({0.f, 0, 1.f, 0.f, 1.f});
    greedy.sample(lv, {}, {&words, 1}, nullptr, &id, &lp);  // greedy draws nothing: no generator needed
    CHECK(id == 2);
    const double z = std::exp(1.0) + std::exp(3.0) + std::exp(2.0) + std::exp(-1.0);
    CHECK(std::fabs(lp - (3.0 - std::log(z))) < 1e-5);
    // Penalty 4 on token 2 (3 -> 0.75): best allowed becomes token 3.
    const int64_t prev[2] = {2, -1};
    const sampling::Sampler pen({0.f, 0, 1.f, 0.f, 4.f});
    pen.sample(lv, {prev, 2}, {&words, 1}, nullptr, &id, nullptr);
    CHECK(id == 3);
    // top_k = 1 at a temperature: always the best token.
    const sampling::Sampler k1({1.f, 1, 1.f, 0.f, 1.f});
    sampling::Rng rng(7);
    for (int i = 0; i < 20; ++i) {
        k1.sample(lv, {}, {}, &rng, &id, nullptr);
        CHECK(id == 1);
    }
    // Sampling without a generator, everything masked -> invalid_argument.
    CHECK(throws([&] { k1.sample(lv, {}, {}, nullptr, &id, nullptr); }));
    uint32_t none = 0;
    CHECK(throws([&] { greedy.sample(lv, {}, {&none, 1}, nullptr, &id, nullptr); }));
    // One sampler, two generators with the same seed: the same draws (the sampler holds no random state).
    const sampling::Sampler top_p({1.f, 0, 0.9f, 0.f, 1.f});
    sampling::Rng ra(42), rb(42);
    for (int i = 0; i < 50; ++i) {
        int64_t ia, ib;
        top_p.sample(lv, {}, {}, &ra, &ia, nullptr);
        top_p.sample(lv, {}, {}, &rb, &ib, nullptr);
        CHECK(ia == ib);
    }
    CHECK(throws([] { sampling::Sampler bad({-1.f, 0, 1.f, 0.f, 1.f}); }));
}

// The parts of the decode step that need no ONNX Runtime (runs against a real one are in tests/test_generate.py and
// tests/test_backend_onnxruntime.py).
static void test_decoder() {
    const float f32[6] = {1.f, 2.f, 3.f, 4.f, 5.f, 6.f};  // 3 rows of hidden 2
    const int64_t ids[3] = {2, 0, 2};
    float out[6] = {};
    ort::gather_embeddings({f32, false, 3, 2}, ids, 3, out);
    const float want[6] = {5.f, 6.f, 1.f, 2.f, 5.f, 6.f};
    CHECK(std::memcmp(out, want, sizeof want) == 0);
    const uint16_t f16[4] = {0x3C00, 0xC000, 0x0000, 0x3800};  // 1, -2, 0, 0.5
    const int64_t one[1] = {0};
    ort::gather_embeddings({f16, true, 2, 2}, one, 1, out);
    CHECK(out[0] == 1.f && out[1] == -2.f);
    const int64_t bad[1] = {3};
    CHECK(throws([&] { ort::gather_embeddings({f32, false, 3, 2}, bad, 1, out); }));
    bool load_failed = false;
    try {
        ort::Runtime::load("/nonexistent/libonnxruntime.so");
    } catch (const std::runtime_error& e) {
        load_failed = std::string(e.what()).find("cannot load /nonexistent/libonnxruntime.so") == 0;
    }
    CHECK(load_failed);
    ort::KvTensor no_batch{"past_key.0", false, {ort::kPast, 2, 4}, 64, 0, 0, false};
    CHECK(throws([&] { ort::Step(nullptr, 1, 8, 16, {no_batch}); }));
    ort::KvTensor null_buffer{"past_key.0", false, {ort::kBatch, ort::kPast, 2, 4}, 0, 0, 0, false};
    CHECK(throws([&] { ort::Step(nullptr, 1, 8, 16, {null_buffer}); }));
}

// The native loop's Text-as-Mask stop: token texts from a table, fed to a compact-codec stream until it closes.
static void test_token_text() {
    // tokens: 0 "<seg>", 1 "no", 2 "ne", 3 "" (no text), 4 a lone UTF-8 lead byte (not clean)
    const std::string bytes = "<seg>none\xE2";
    const int64_t offsets[6] = {0, 5, 7, 9, 9, 10};
    const uint8_t clean[5] = {1, 1, 1, 1, 0};
    const ort::TokenText text{reinterpret_cast<const uint8_t*>(bytes.data()), offsets, clean, 5};
    CHECK(ort::text_clean(text, 0) && ort::text_clean(text, 3));
    CHECK(!ort::text_clean(text, 4) && !ort::text_clean(text, 5) && !ort::text_clean(text, -1));
    tam::StreamDecoder stream(spec(tam::CodecKind::Compact, 4));
    CHECK(!ort::feed_token_text(text, stream, 0));
    CHECK(!ort::feed_token_text(text, stream, 3));  // no text: nothing fed, still open
    CHECK(!ort::feed_token_text(text, stream, 1));  // "<seg>no": "none" is not complete yet
    CHECK(ort::feed_token_text(text, stream, 2));   // "<seg>none": the empty mask closes the stream
    tam::StreamDecoder other(spec(tam::CodecKind::Compact, 4));
    bool refused = false;
    try {
        ort::feed_token_text(text, other, 4);
    } catch (const std::logic_error&) {
        refused = true;
    }
    CHECK(refused && !other.closed());
}

int main() {
    test_compact();
    test_coords();
    test_rle();
    test_stream();
    test_garbage_bounded();
    test_upsample();
    test_mask_to_grid_and_components();
    test_kernels();
    test_sampler();
    test_decoder();
    test_token_text();
    if (failures) {
        std::fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    std::printf("all native checks passed\n");
    return 0;
}
