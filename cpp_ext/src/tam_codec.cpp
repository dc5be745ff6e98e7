// Text-as-Mask codecs: encoders and the one streaming decoder all codecs share.
#include "omniad/tam.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace omniad::tam {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v'; }
char lower(char c) { return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c; }
bool is_alpha(char c) { c = lower(c); return c >= 'a' && c <= 'z'; }
bool is_word(char c) { return is_alpha(c) || (c >= '0' && c <= '9') || c == '_' || c == '-'; }

std::string_view trim(std::string_view s) {
    while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
    while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
    return s;
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (lower(a[i]) != lower(b[i])) return false;
    return true;
}

// Quoted excerpt of untrusted text for problem messages (bounded, printable ASCII only).
std::string excerpt(std::string_view s) {
    std::string out = "'";
    for (std::size_t i = 0; i < s.size() && i < 16; ++i) out += (s[i] >= 32 && s[i] < 127) ? s[i] : '?';
    if (s.size() > 16) out += "...";
    return out + "'";
}

bool is_separator(CodecKind kind, char c) { return c == '\n' || (kind == CodecKind::Compact && c == ';'); }

constexpr std::string_view kNone = "none";

}  // namespace

void validate(const CodecSpec& spec) {
    const bool rle = spec.kind == CodecKind::Rle, coords = spec.kind == CodecKind::Coords;
    const int max_grid = spec.kind == CodecKind::Compact ? 26 : 256;
    if (spec.grid < 1 || spec.grid > max_grid)
        throw std::invalid_argument("grid must be in 1.." + std::to_string(max_grid) + " for the " +
                                    (rle ? "rle" : coords ? "coords" : "compact (one letter per coordinate)") +
                                    " codec, got " + std::to_string(spec.grid));
    if (spec.labels.size() < 2 || spec.labels.size() > 256)
        throw std::invalid_argument("labels must hold 2..256 names (index 0 = background), got " +
                                    std::to_string(spec.labels.size()));
    // JUDO's coordinate masks carry no class: one anomaly label, never written in the text
    if (coords && spec.labels.size() != 2)
        throw std::invalid_argument("labels must hold exactly 2 names for the coords codec (binary masks), got " +
                                    std::to_string(spec.labels.size()));
    for (std::size_t i = 0; i < spec.labels.size(); ++i) {
        const std::string& l = spec.labels[i];
        const std::string where = "labels[" + std::to_string(i) + "] " + excerpt(l);
        if (l.empty() || l.size() > 64) throw std::invalid_argument(where + " must have 1..64 characters");
        if (coords) {
            // never parsed: any name will do
        } else if (rle) {
            if (trim(l) != l) throw std::invalid_argument(where + " must not start or end with whitespace");
            for (char c : l)
                if (c == '|' || c == '*' || c == '\n' || c == '<' || c == ';')
                    throw std::invalid_argument(where + " must not contain '|', '*', ';', '<' or a newline");
        } else {
            if (l.size() < 3 || !is_alpha(l[0]) || !std::all_of(l.begin(), l.end(), is_word))
                throw std::invalid_argument(where +
                                            " must be 3+ characters [A-Za-z0-9_-] starting with a letter (compact)");
            if (iequals(l, kNone)) throw std::invalid_argument(where + " must not be 'none' (the empty mask)");
        }
        for (std::size_t j = 0; j < i; ++j)
            if (iequals(spec.labels[j], l)) throw std::invalid_argument(where + " is a duplicate (case-insensitive)");
    }
    for (const std::string* tag : {&spec.open_tag, &spec.close_tag})
        for (char c : *tag)
            if (is_space(c) || is_separator(spec.kind, c) || c == ',' || c == '|')
                throw std::invalid_argument("tag " + excerpt(*tag) + " must not contain whitespace or separators");
}

// ---- encoders ------------------------------------------------------------------------------------------------------

std::string encode(const CodecSpec& spec, const uint8_t* grid) {
    const int g = spec.grid;
    for (int i = 0; i < g * g; ++i)
        if (grid[i] >= spec.labels.size())
            throw std::invalid_argument("grid value " + std::to_string(grid[i]) + " at row " + std::to_string(i / g) +
                                        ", column " + std::to_string(i % g) + " has no label (labels has " +
                                        std::to_string(spec.labels.size()) + " names)");
    std::string out;
    if (spec.kind == CodecKind::Rle) {
        for (int r = 0; r < g; ++r) {
            if (r) out += '\n';
            const uint8_t* row = grid + r * g;
            for (int c = 0; c < g;) {
                int e = c;
                while (e < g && row[e] == row[c]) ++e;
                if (c) out += "| ";
                out += spec.labels[row[c]];
                out += " *";
                out += std::to_string(e - c);
                c = e;
            }
        }
        return out;
    }
    if (spec.kind == CodecKind::Coords) {
        // JUDO: 1-indexed (row,col) cells, a run of a row as "(r,c0)-(r,c1)", items joined by ", "
        for (int r = 0; r < g; ++r) {
            const uint8_t* row = grid + r * g;
            for (int c = 0; c < g;) {
                if (!row[c]) { ++c; continue; }
                int e = c;
                while (e < g && row[e]) ++e;
                if (!out.empty()) out += ", ";
                const std::string head = "(" + std::to_string(r + 1) + ",";
                out += head + std::to_string(c + 1) + ")";
                if (e - c > 1) out += "-" + head + std::to_string(e) + ")";
                c = e;
            }
        }
        return out.empty() ? std::string("None") : out;
    }
    int label = 1;  // the decoder starts with labels[1] in force
    for (int r = 0; r < g; ++r) {
        const uint8_t* row = grid + r * g;
        bool started = false;
        for (int c = 0; c < g;) {
            if (!row[c]) { ++c; continue; }
            int e = c;
            while (e < g && row[e] == row[c]) ++e;
            if (!started) {
                if (!out.empty()) out += ';';
                out += char('a' + r);
                started = true;
            }
            if (row[c] != label) {
                label = row[c];
                out += ' ';
                out += spec.labels[label];
                out += ':';
            }
            out += ' ';
            out += char('a' + c);
            out += char('a' + e - 1);
            c = e;
        }
    }
    return out.empty() ? std::string(kNone) : out;
}

// ---- streaming decoder ---------------------------------------------------------------------------------------------

StreamDecoder::StreamDecoder(CodecSpec spec) : spec_(std::move(spec)), g_(spec_.grid) {
    validate(spec_);
    // A well-formed record is at most one row of runs with label names; anything longer is garbage.
    std::size_t longest = 0;
    for (const auto& l : spec_.labels) longest = std::max(longest, l.size());
    record_cap_ = 256 + std::size_t(g_) * (longest + 16) + spec_.open_tag.size() + spec_.close_tag.size();
    grid_.assign(std::size_t(g_) * g_, 0);
}

void StreamDecoder::problem(std::string msg) {
    repaired_ = true;
    if (problems_.size() < kMaxProblems && std::find(problems_.begin(), problems_.end(), msg) == problems_.end())
        problems_.push_back(std::move(msg));
}

int StreamDecoder::label_index(std::string_view name) const {
    for (std::size_t i = 0; i < spec_.labels.size(); ++i)
        if (iequals(spec_.labels[i], name)) return int(i);
    return -1;
}

int StreamDecoder::feed(std::string_view chunk) {
    for (char c : chunk) {
        if (done_) break;
        on_char(c);
    }
    return rows_done();
}

int StreamDecoder::rows_done() const {
    if (closed_) return g_;
    if (spec_.kind == CodecKind::Rle) return int(std::min<std::size_t>(g_, pos_ / g_));
    // coords: the row of the last item may still get more items
    if (spec_.kind == CodecKind::Coords) return std::max(0, max_row_);
    return max_row_ + 1;
}

void StreamDecoder::on_char(char c) {
    if (spec_.kind == CodecKind::Coords) {
        if (c == '(') ++depth_;
        else if (c == ')') depth_ = std::max(0, depth_ - 1);
        else if (c == ',' && depth_ == 0) {
            end_record();
            return;
        }
    }
    if (is_separator(spec_.kind, c)) {
        end_record();
        return;
    }
    const std::string& tag = spec_.close_tag;
    if (!rec_overflow_ && rec_.size() < record_cap_) {
        rec_.push_back(c);
    } else {
        // Over-long record: keep its head for parsing and a short tail to still see the close tag.
        if (!rec_overflow_) tail_.assign(rec_, rec_.size() - std::min(rec_.size(), tag.size()));
        rec_overflow_ = true;
        tail_.push_back(c);
        if (tail_.size() > 2 * tag.size() + 16) tail_.erase(0, tail_.size() - tag.size());
    }
    const std::string& seen = rec_overflow_ ? tail_ : rec_;
    if (!tag.empty() && c == tag.back() && seen.size() >= tag.size() &&
        seen.compare(seen.size() - tag.size(), tag.size(), tag) == 0) {
        if (rec_overflow_) tail_.clear();
        else rec_.resize(rec_.size() - tag.size());
        end_record();
        closed_ = complete_ = done_ = true;
        return;
    }
    // "none" closes a compact or coords mask at once so generation can stop without waiting for the tag.
    if (spec_.kind != CodecKind::Rle && (c == 'e' || c == 'E') && !rec_overflow_ && max_row_ < 0 && pos_ == 0) {
        std::string_view body = trim(rec_);
        if (!spec_.open_tag.empty() && body.substr(0, spec_.open_tag.size()) == spec_.open_tag)
            body = trim(body.substr(spec_.open_tag.size()));
        if (iequals(body, kNone)) {
            rec_.clear();
            saw_content_ = true;
            closed_ = complete_ = done_ = true;
        }
    }
}

void StreamDecoder::end_record() {
    if (rec_overflow_) problem("a record longer than " + std::to_string(record_cap_) + " characters was cut");
    parse_record(rec_);
    rec_.clear();
    tail_.clear();
    rec_overflow_ = false;
    depth_ = 0;
}

void StreamDecoder::parse_record(std::string_view rec) {
    std::string stripped;
    const std::string& open = spec_.open_tag;
    if (!open.empty() && rec.find(open) != std::string_view::npos) {
        stripped.assign(rec);
        for (std::size_t at; (at = stripped.find(open)) != std::string::npos;) stripped.erase(at, open.size());
        rec = stripped;
    }
    rec = trim(rec);
    if (rec.empty()) return;
    saw_content_ = true;
    if (spec_.kind == CodecKind::Rle) parse_rle_row(rec);
    else if (spec_.kind == CodecKind::Coords) parse_coords_item(rec);
    else parse_compact_row(rec);
}

// Text4Seg: runs "label *count" joined by '|'; cells are written in one flat sequence (rows are not re-aligned).
void StreamDecoder::parse_rle_row(std::string_view rec) {
    const std::size_t total = grid_.size();
    if (pos_ >= total) {  // the grid is full: rows before the close tag are extra
        problem("more than " + std::to_string(g_) + " rows; the extra ones were dropped");
        return;
    }
    const std::size_t row_start = pos_;
    std::size_t row_cells = 0;
    bool bad_row = false;
    while (!rec.empty()) {
        std::size_t bar = rec.find('|');
        std::string_view run = trim(rec.substr(0, bar));
        rec = bar == std::string_view::npos ? std::string_view() : rec.substr(bar + 1);
        if (run.empty()) continue;
        std::size_t star = run.rfind('*');
        if (star == std::string_view::npos) {
            problem("run " + excerpt(run) + " has no '*count'");
            bad_row = true;
            continue;
        }
        std::string_view name = trim(run.substr(0, star)), digits = trim(run.substr(star + 1));
        std::size_t count = 0;
        bool ok = !digits.empty();
        for (char d : digits) {
            if (d < '0' || d > '9') { ok = false; break; }
            count = std::min<std::size_t>(count * 10 + std::size_t(d - '0'), total + 1);  // saturate: bounded work
        }
        if (!ok || count == 0) {
            problem("run " + excerpt(run) + ": count must be a positive integer");
            bad_row = true;
            continue;
        }
        int label = label_index(name);
        if (label < 0) {
            problem("unknown label " + excerpt(name) + " read as background");
            label = 0;
        }
        row_cells += count;
        std::size_t n = std::min(count, total - pos_);
        std::memset(grid_.data() + pos_, label, n);
        pos_ += n;
        if (n < count) {
            problem("more than " + std::to_string(total) + " cells; the rest was dropped");
            break;
        }
    }
    if (!bad_row && row_cells != std::size_t(g_) && row_start < total)
        problem("row " + std::to_string(row_start / g_) + " has " + std::to_string(row_cells) + " cells, expected " +
                std::to_string(g_));
    if (pos_ >= total) closed_ = complete_ = true;
}

// "j fg kl" / "j fg crack: kl": row letter, then 2-letter inclusive column ranges; "name:" switches the label.
void StreamDecoder::parse_compact_row(std::string_view rec) {
    if (iequals(rec, kNone)) {
        if (max_row_ >= 0) problem("'none' after rows was ignored");
        else closed_ = complete_ = done_ = true;
        return;
    }
    int row = -1, ranges = 0;
    bool flagged_char = false;
    std::size_t i = 0;
    auto fill = [&](char a, char b) {
        int c0 = lower(a) - 'a', c1 = lower(b) - 'a';
        if (c0 >= g_ || c1 >= g_) {
            problem("row " + std::to_string(row) + ": column beyond the " + std::to_string(g_) + "-cell grid dropped");
            return;
        }
        if (c0 > c1) {
            problem("row " + std::to_string(row) + ": reversed range swapped");
            std::swap(c0, c1);
        }
        std::memset(grid_.data() + std::size_t(row) * g_ + c0, label_, std::size_t(c1 - c0 + 1));
        ++ranges;
    };
    while (i < rec.size()) {
        char c = rec[i];
        if (is_space(c) || c == ',' || c == ':') { ++i; continue; }
        if (!is_word(c)) {
            if (!flagged_char) problem("unexpected character in " + excerpt(rec));
            flagged_char = true;
            ++i;
            continue;
        }
        std::size_t j = i;
        while (j < rec.size() && is_word(rec[j])) ++j;
        std::string_view word = rec.substr(i, j - i);
        const bool colon = j < rec.size() && rec[j] == ':';
        i = j;
        const bool letters = std::all_of(word.begin(), word.end(), is_alpha);
        if (colon || word.size() >= 4 || (word.size() == 3 && (!letters || row >= 0))) {
            int l = label_index(word);
            if (l < 0) problem("unknown label " + excerpt(word) + " ignored");
            else label_ = l;
            continue;
        }
        if (!letters) {
            problem("unexpected " + excerpt(word) + " ignored");
            continue;
        }
        if (row < 0) {
            int r = lower(word[0]) - 'a';
            if (r >= g_) {
                problem("row " + excerpt(word) + " beyond the grid; record dropped");
                return;
            }
            row = r;
            if (word.size() == 3) fill(word[1], word[2]);  // "jfg": row and range written together
            else if (word.size() == 2) fill(word[1], word[1]);
            continue;
        }
        if (word.size() == 2) fill(word[0], word[1]);
        else fill(word[0], word[0]);
    }
    if (row < 0) {
        problem("record " + excerpt(rec) + " has no row letter; dropped");
        return;
    }
    if (ranges == 0) problem("row " + std::to_string(row) + " has no column range");
    max_row_ = std::max(max_row_, row);
}

// "(11,12)-(11,14)" / "(12,11)": 1-indexed (row,col) cells; a range fills its cells in reading order.
void StreamDecoder::parse_coords_item(std::string_view rec) {
    if (iequals(rec, kNone)) {
        if (max_row_ >= 0) problem("'None' after cells was ignored");
        else closed_ = complete_ = done_ = true;
        return;
    }
    int nums[4];
    int count = 0;
    bool flagged_char = false;
    for (std::size_t i = 0; i < rec.size();) {
        char c = rec[i];
        if (c >= '0' && c <= '9') {
            int v = 0;
            for (; i < rec.size() && rec[i] >= '0' && rec[i] <= '9'; ++i) v = std::min(v * 10 + (rec[i] - '0'), 100000);
            if (count < 4) nums[count] = v;
            ++count;
            continue;
        }
        if (!(is_space(c) || c == '(' || c == ')' || c == ',' || c == '-') && !flagged_char) {
            problem("unexpected character in " + excerpt(rec));
            flagged_char = true;
        }
        ++i;
    }
    if (count != 2 && count != 4) {
        problem("item " + excerpt(rec) + " is not (row,col) or (row,col)-(row,col); dropped");
        return;
    }
    for (int k = 0; k < count; ++k)
        if (nums[k] < 1 || nums[k] > g_) {
            problem("item " + excerpt(rec) + " lies outside the " + std::to_string(g_) + "x" + std::to_string(g_) +
                    " grid (1-indexed); dropped");
            return;
        }
    std::size_t a = std::size_t(nums[0] - 1) * g_ + std::size_t(nums[1] - 1), b = a;
    if (count == 4) {
        b = std::size_t(nums[2] - 1) * g_ + std::size_t(nums[3] - 1);
        if (nums[2] != nums[0]) problem("range " + excerpt(rec) + " spans rows; filled in reading order");
        if (b < a) {
            problem("reversed range " + excerpt(rec) + " swapped");
            std::swap(a, b);
        }
    }
    std::memset(grid_.data() + a, 1, b - a + 1);
    saw_content_ = true;
    max_row_ = std::max(max_row_, int(b / std::size_t(g_)));
}

void StreamDecoder::finish(bool end_of_text) {
    if (!done_) {
        // A cut close tag at the very end ("...</se") is not content.
        const std::string& tag = spec_.close_tag;
        for (std::size_t k = std::min(tag.size() - (tag.empty() ? 0 : 1), rec_.size()); k >= 2; --k)
            if (rec_.compare(rec_.size() - k, k, tag, 0, k) == 0) {
                rec_.resize(rec_.size() - k);
                problem("cut close tag");
                break;
            }
        end_record();
    }
    if (spec_.kind == CodecKind::Rle) {
        complete_ = pos_ >= grid_.size();
        if (!complete_) {
            if (pos_ == 0) problem("no cells decoded");
            else problem(std::to_string(grid_.size() - pos_) + " missing cells padded with the last value");
            std::memset(grid_.data() + pos_, pos_ ? grid_[pos_ - 1] : 0, grid_.size() - pos_);
        }
    } else {
        if (!saw_content_) problem("empty mask text (expected 'none' or rows)");
        complete_ = closed_ || (end_of_text && saw_content_);
    }
}

Decoded StreamDecoder::result(bool end_of_text) const {
    StreamDecoder copy = *this;
    copy.finish(end_of_text);
    Decoded d;
    d.grid = std::move(copy.grid_);
    d.repaired = copy.repaired_;
    d.complete = copy.complete_;
    d.problems = std::move(copy.problems_);
    return d;
}

Decoded decode(const CodecSpec& spec, std::string_view text) {
    StreamDecoder d(spec);
    d.feed(text);
    return d.result(true);
}

}  // namespace omniad::tam
