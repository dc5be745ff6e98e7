// Text-as-Mask grids at frame resolution: upsampling, the coverage rule, connected components.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "omniad/tam.hpp"

namespace omniad::tam {
namespace {

void check_dims(int gh, int gw, int h, int w) {
    if (gh < 1 || gw < 1 || h < 1 || w < 1)
        throw std::invalid_argument("grid and output sizes must be positive, got grid " + std::to_string(gh) + "x" +
                                    std::to_string(gw) + ", output " + std::to_string(h) + "x" + std::to_string(w));
}

// Bilinear source position of output index i (half-pixel centres), clamped to the grid.
struct Tap {
    int i0, i1;
    float w1;
};

std::vector<Tap> taps(int out, int in) {
    std::vector<Tap> t(out);
    const double scale = double(in) / out;
    for (int i = 0; i < out; ++i) {
        double s = std::clamp((i + 0.5) * scale - 0.5, 0.0, double(in - 1));
        int i0 = int(s);
        t[i] = {i0, std::min(i0 + 1, in - 1), float(s - i0)};
    }
    return t;
}

// Pixel span [begin, end) of cell k along an axis of n pixels split into g cells (see mask_to_grid).
std::pair<int, int> cell_span(int k, int n, int g) {
    int b = int((int64_t(k) * n + g - 1) / g), e = int((int64_t(k + 1) * n + g - 1) / g);
    if (b >= e) {  // more cells than pixels: the cell samples its nearest pixel
        b = int(std::min<int64_t>(n - 1, (int64_t(2 * k + 1) * n) / (2 * g)));
        e = b + 1;
    }
    return {b, e};
}

struct DisjointSet {
    std::vector<int32_t> parent;
    int32_t add() {
        parent.push_back(int32_t(parent.size()));
        return parent.back();
    }
    int32_t find(int32_t a) {
        while (parent[a] != a) a = parent[a] = parent[parent[a]];
        return a;
    }
    void unite(int32_t a, int32_t b) {
        a = find(a), b = find(b);
        if (a != b) parent[std::max(a, b)] = std::min(a, b);  // the root is the earliest run
    }
};

struct Run {
    int32_t y, x0, x1;  // x1 exclusive
    uint8_t label;
    int32_t set;
};

}  // namespace

void upsample_nearest(const uint8_t* grid, int gh, int gw, uint8_t* out, int h, int w, bool binary) {
    check_dims(gh, gw, h, w);
    std::vector<int> xs(w);
    for (int x = 0; x < w; ++x) xs[x] = int(int64_t(x) * gw / w);
    int built = -1;
    uint8_t* prev = nullptr;
    for (int y = 0; y < h; ++y) {
        int r = int(int64_t(y) * gh / h);
        uint8_t* dst = out + std::size_t(y) * w;
        if (r == built) {
            std::memcpy(dst, prev, std::size_t(w));  // row replication
            continue;
        }
        const uint8_t* src = grid + std::size_t(r) * gw;
        for (int x = 0; x < w; ++x) dst[x] = binary ? uint8_t(src[xs[x]] != 0) : src[xs[x]];
        built = r;
        prev = dst;
    }
}

void upsample_smooth(const uint8_t* grid, int gh, int gw, uint8_t* out, int h, int w) {
    check_dims(gh, gw, h, w);
    const std::vector<Tap> tx = taps(w, gw), ty = taps(h, gh);
    // Horizontal pass once per grid row; the vertical blend per output row is then two multiply-adds per pixel.
    std::vector<float> rows(std::size_t(gh) * w);
    std::vector<char> any(gh, 0);
    for (int r = 0; r < gh; ++r) {
        const uint8_t* g = grid + std::size_t(r) * gw;
        float* dst = rows.data() + std::size_t(r) * w;
        for (int c = 0; c < gw; ++c) any[r] |= g[c] != 0;
        for (int x = 0; x < w; ++x)
            dst[x] = float(g[tx[x].i0] != 0) * (1.f - tx[x].w1) + float(g[tx[x].i1] != 0) * tx[x].w1;
    }
    for (int y = 0; y < h; ++y) {
        uint8_t* dst = out + std::size_t(y) * w;
        const Tap t = ty[y];
        if (!any[t.i0] && !any[t.i1]) {
            std::memset(dst, 0, std::size_t(w));
            continue;
        }
        const float* a = rows.data() + std::size_t(t.i0) * w;
        const float* b = rows.data() + std::size_t(t.i1) * w;
        const float wa = 1.f - t.w1, wb = t.w1;
        for (int x = 0; x < w; ++x) dst[x] = uint8_t(a[x] * wa + b[x] * wb >= 0.5f);
    }
}

void mask_to_grid(const uint8_t* mask, int h, int w, int g, float coverage, uint8_t* grid) {
    check_dims(g, g, h, w);
    if (!(coverage > 0.f && coverage <= 1.f))
        throw std::invalid_argument("coverage must be in (0, 1], got " + std::to_string(coverage));
    std::vector<std::pair<int, int>> xspan(g);
    for (int c = 0; c < g; ++c) xspan[c] = cell_span(c, w, g);
    std::vector<uint32_t> counts(std::size_t(g) * 256);
    for (int r = 0; r < g; ++r) {
        auto [y0, y1] = cell_span(r, h, g);
        std::fill(counts.begin(), counts.end(), 0u);
        int top = 0;  // highest label seen in this band of rows
        for (int y = y0; y < y1; ++y) {
            const uint8_t* row = mask + std::size_t(y) * w;
            for (int c = 0; c < g; ++c) {
                uint32_t* cnt = counts.data() + std::size_t(c) * 256;
                for (int x = xspan[c].first; x < xspan[c].second; ++x) {
                    ++cnt[row[x]];
                    top = std::max<int>(top, row[x]);
                }
            }
        }
        for (int c = 0; c < g; ++c) {
            const uint32_t* cnt = counts.data() + std::size_t(c) * 256;
            const double need = double(coverage) * double(y1 - y0) * double(xspan[c].second - xspan[c].first);
            int best = 0;
            for (int l = 1; l <= top; ++l)
                if (cnt[l] && cnt[l] >= need && (best == 0 || cnt[l] > cnt[best])) best = l;
            grid[std::size_t(r) * g + c] = uint8_t(best);
        }
    }
}

Components connected_components(const uint8_t* img, int h, int w, int connectivity, int32_t* ids) {
    check_dims(1, 1, h, w);
    if (connectivity != 4 && connectivity != 8)
        throw std::invalid_argument("connectivity must be 4 or 8, got " + std::to_string(connectivity));
    const int reach = connectivity == 8 ? 1 : 0;  // diagonal neighbours touch when runs are one pixel apart
    std::vector<Run> runs;
    DisjointSet sets;
    std::size_t prev_begin = 0, prev_end = 0;
    for (int y = 0; y < h; ++y) {
        const uint8_t* row = img + std::size_t(y) * w;
        const std::size_t cur_begin = runs.size();
        for (int x = 0; x < w;) {
            if (!row[x]) { ++x; continue; }
            int e = x;
            while (e < w && row[e] == row[x]) ++e;
            runs.push_back({y, x, e, row[x], sets.add()});
            x = e;
        }
        // Runs of both rows are sorted by x: a two-pointer sweep finds every overlapping pair.
        std::size_t p = prev_begin;
        for (std::size_t k = cur_begin; k < runs.size(); ++k) {
            Run& cur = runs[k];
            while (p < prev_end && runs[p].x1 + reach <= cur.x0) ++p;
            for (std::size_t q = p; q < prev_end && runs[q].x0 < cur.x1 + reach; ++q)
                if (runs[q].label == cur.label) sets.unite(runs[q].set, cur.set);
        }
        prev_begin = cur_begin;
        prev_end = runs.size();
    }
    Components out;
    std::vector<int32_t> index(sets.parent.size(), -1);
    for (Run& r : runs) {
        int32_t root = sets.find(r.set);
        if (index[root] < 0) {  // roots are earliest runs, so components come in raster order
            index[root] = int32_t(out.label.size());
            out.label.push_back(r.label);
            out.box.insert(out.box.end(), {r.x0, r.y, r.x1, r.y + 1});
            out.pixels.push_back(0);
        }
        int32_t k = r.set = index[root];
        int32_t* b = out.box.data() + std::size_t(k) * 4;
        b[0] = std::min(b[0], r.x0);
        b[2] = std::max(b[2], r.x1);
        b[3] = std::max(b[3], r.y + 1);
        out.pixels[k] += r.x1 - r.x0;
    }
    if (ids) {
        std::fill(ids, ids + std::size_t(h) * w, -1);
        for (const Run& r : runs) std::fill(ids + std::size_t(r.y) * w + r.x0, ids + std::size_t(r.y) * w + r.x1, r.set);
    }
    return out;
}

}  // namespace omniad::tam
