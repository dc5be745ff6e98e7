// Text-as-Mask core: grid <-> text codecs, streaming decoder, grid -> frame masks, connected components.
//
// Callers must know:
// - A grid is G*G uint8 labels, row-major; 0 is background, 1..K index CodecSpec::labels.
// - Decoders never throw on text and never crash: work is bounded by the input length and G*G, memory by G*G and a
//   fixed per-record cap. Problems are reported in Decoded::repaired / problems.
// - Constructors and encoders throw std::invalid_argument on bad arguments (the bindings turn it into ValueError).
// - A CodecSpec is immutable: encode/decode on one spec may run from any number of threads. A StreamDecoder is one
//   sequence's state and not thread-safe; distinct decoders may be used from distinct threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace omniad::tam {

enum class CodecKind { Rle, Compact, Coords };

struct CodecSpec {
    CodecKind kind = CodecKind::Compact;
    int grid = 16;
    std::vector<std::string> labels{"others", "anomaly"};  // index 0 = background name
    std::string open_tag = "<seg>";
    std::string close_tag = "</seg>";
};

// Throws std::invalid_argument naming the field when the spec cannot work (grid range, label syntax, duplicates).
void validate(const CodecSpec& spec);

struct Decoded {
    std::vector<uint8_t> grid;          // G*G, always full size
    bool repaired = false;              // something had to be guessed, dropped or padded
    bool complete = false;              // the mask was terminated (close tag, full grid, "none", or end of text)
    std::vector<std::string> problems;  // short, at most kMaxProblems entries
};

constexpr std::size_t kMaxProblems = 8;

// grid: G*G labels, each < labels.size(), else std::invalid_argument.
std::string encode(const CodecSpec& spec, const uint8_t* grid);

// Incremental decoder; decode() is feed(text) + finish(), so streaming and one-shot decoding agree exactly.
class StreamDecoder {
public:
    explicit StreamDecoder(CodecSpec spec);
    // Consumes a chunk; returns the number of grid rows that are final so far. Text after the close tag is ignored.
    int feed(std::string_view chunk);
    int rows_done() const;
    // True once the close tag, the end of the grid (rle) or "none" (compact, coords) has been seen: generation can
    // stop.
    bool closed() const { return closed_; }
    // Best-effort grid from what was fed. end_of_text: the text is over (one-shot decode), so a record cut by the
    // end is still parsed and the mask counts as complete if nothing is missing; false: a snapshot mid-stream.
    Decoded result(bool end_of_text) const;

private:
    void on_char(char c);
    void end_record();
    void parse_record(std::string_view rec);
    void parse_rle_row(std::string_view rec);
    void parse_compact_row(std::string_view rec);
    void parse_coords_item(std::string_view rec);
    void problem(std::string msg);
    void finish(bool end_of_text);
    int label_index(std::string_view name) const;

    CodecSpec spec_;
    int g_;
    std::size_t record_cap_;
    std::vector<uint8_t> grid_;
    std::string rec_;       // the record being read (bounded by record_cap_)
    std::string tail_;      // last chars of an over-long record, to still see the close tag
    bool rec_overflow_ = false;
    bool closed_ = false;   // the mask is over: generation may stop
    bool done_ = false;     // stop reading (close tag or "none"); rle keeps reading after a full grid to flag extras
    bool repaired_ = false;
    bool complete_ = false;
    bool saw_content_ = false;
    std::vector<std::string> problems_;
    // rle: flat write position (Text4Seg semantics); compact: label in force and highest finished row
    std::size_t pos_ = 0;
    int rows_ = 0;
    int label_ = 1;
    int max_row_ = -1;
    int depth_ = 0;  // coords: parenthesis depth, so the ',' inside "(r,c)" does not end a record
};

Decoded decode(const CodecSpec& spec, std::string_view text);

// ---- grid -> frame resolution -------------------------------------------------------------------------------------

// Nearest upsampling of a gh*gw label grid to out (h*w): out[y][x] = grid[y*gh/h][x*gw/w] (binary: != 0 -> 1).
// Row replication: each distinct output row is built once and copied.
void upsample_nearest(const uint8_t* grid, int gh, int gw, uint8_t* out, int h, int w, bool binary);

// Bilinear (half-pixel centres, edge clamp) upsampling of (grid != 0) thresholded at 0.5 -> out 0/1.
void upsample_smooth(const uint8_t* grid, int gh, int gw, uint8_t* out, int h, int w);

// Coverage rule: cell (r, c) covers pixels y in [ceil(r*h/G), ceil((r+1)*h/G)), i.e. exactly those that nearest
// upsampling maps back to it (one nearest pixel when h < G). A cell gets the label with most pixels among labels
// whose pixel fraction >= coverage (ties -> lower label); no label qualifies -> 0. coverage in (0, 1].
void mask_to_grid(const uint8_t* mask, int h, int w, int g, float coverage, uint8_t* grid);

struct Components {
    std::vector<uint8_t> label;     // per component
    std::vector<int32_t> box;       // per component x0, y0, x1, y1 (x1, y1 exclusive)
    std::vector<int64_t> pixels;    // per component pixel count
};

// Connected components of equal non-zero labels (connectivity 4 or 8), run-based union-find. If ids is not null it
// receives h*w component indices (-1 = background). Components are ordered by their first pixel in raster order.
Components connected_components(const uint8_t* img, int h, int w, int connectivity, int32_t* ids);

}  // namespace omniad::tam
