// Bindings of the Text-as-Mask core. Text crosses as bytes (UTF-8): the decoder treats any byte it does not
// understand as garbage, so no text can make it fail.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>

#include "buffers.hpp"
#include "omniad/tam.hpp"

namespace py = pybind11;
using omniad::py_buffers::Kind;
using omniad::py_buffers::require;
namespace tam = omniad::tam;

namespace {

tam::CodecSpec make_spec(const std::string& kind, int grid, std::vector<std::string> labels, std::string open_tag,
                         std::string close_tag) {
    tam::CodecSpec s;
    if (kind == "rle") s.kind = tam::CodecKind::Rle;
    else if (kind == "compact") s.kind = tam::CodecKind::Compact;
    else if (kind == "coords") s.kind = tam::CodecKind::Coords;
    else throw std::invalid_argument("codec must be 'rle', 'compact' or 'coords', got '" + kind + "'");
    s.grid = grid;
    s.labels = std::move(labels);
    s.open_tag = std::move(open_tag);
    s.close_tag = std::move(close_tag);
    tam::validate(s);
    return s;
}

py::tuple to_python(tam::Decoded d, int g) {
    py::array_t<uint8_t> grid({g, g});
    std::copy(d.grid.begin(), d.grid.end(), grid.mutable_data());
    return py::make_tuple(grid, d.repaired, d.complete, d.problems);
}

// An (h, w) uint8 or bool image from a checked argument.
struct Image {
    const uint8_t* data;
    int h, w;
};

Image image_arg(py::handle obj, const char* name) {
    auto a = require(obj, name, {Kind::U8, Kind::Bool}, 2, 2);
    if (a.dim(0) < 1 || a.dim(1) < 1 || a.dim(0) > (1 << 20) || a.dim(1) > (1 << 20))
        throw py::value_error(std::string(name) + " must have 1..2^20 rows and columns");
    return {static_cast<const uint8_t*>(a.data()), int(a.dim(0)), int(a.dim(1))};
}

}  // namespace

void bind_tam(py::module_& m) {
    py::class_<tam::StreamDecoder>(m, "StreamDecoder")
        .def("feed", [](tam::StreamDecoder& d, const py::bytes& chunk) { return d.feed(std::string_view(chunk)); },
             py::arg("chunk"))
        .def_property_readonly("closed", &tam::StreamDecoder::closed)
        .def_property_readonly("rows_done", &tam::StreamDecoder::rows_done)
        .def("result", [](const tam::StreamDecoder& d, bool end_of_text, int g) { return to_python(d.result(end_of_text), g); },
             py::arg("end_of_text"), py::arg("grid"));

    py::class_<tam::CodecSpec>(m, "Codec")
        .def(py::init(&make_spec), py::arg("kind"), py::arg("grid"), py::arg("labels"), py::arg("open_tag"),
             py::arg("close_tag"))
        .def_property_readonly("grid", [](const tam::CodecSpec& s) { return s.grid; })
        .def("encode",
             [](const tam::CodecSpec& s, py::handle grid) {
                 auto a = require(grid, "grid", {Kind::U8}, 2, 2);
                 if (a.dim(0) != s.grid || a.dim(1) != s.grid)
                     throw py::value_error("grid must have shape (" + std::to_string(s.grid) + ", " +
                                           std::to_string(s.grid) + ")");
                 return tam::encode(s, static_cast<const uint8_t*>(a.data()));
             },
             py::arg("grid"))
        .def("decode",
             [](const tam::CodecSpec& s, const py::bytes& text) {
                 std::string_view view(text);
                 tam::Decoded d;
                 {
                     py::gil_scoped_release unlocked;
                     d = tam::decode(s, view);
                 }
                 return to_python(std::move(d), s.grid);
             },
             py::arg("text"))
        .def("stream", [](const tam::CodecSpec& s) { return tam::StreamDecoder(s); });

    m.def("upsample",
          [](py::handle grid, int h, int w, bool smooth, bool binary) {
              Image g = image_arg(grid, "grid");
              if (h < 1 || w < 1) throw py::value_error("size must be two positive integers (H, W)");
              py::array_t<uint8_t> out({h, w});
              uint8_t* dst = out.mutable_data();
              {
                  py::gil_scoped_release unlocked;
                  if (smooth) tam::upsample_smooth(g.data, g.h, g.w, dst, h, w);
                  else tam::upsample_nearest(g.data, g.h, g.w, dst, h, w, binary);
              }
              return out;
          },
          py::arg("grid"), py::arg("h"), py::arg("w"), py::arg("smooth"), py::arg("binary"));

    m.def("mask_to_grid",
          [](py::handle mask, int g, float coverage) {
              Image img = image_arg(mask, "mask");
              if (g < 1 || g > 4096) throw py::value_error("grid must be in 1..4096, got " + std::to_string(g));
              py::array_t<uint8_t> out({g, g});
              uint8_t* dst = out.mutable_data();
              {
                  py::gil_scoped_release unlocked;
                  tam::mask_to_grid(img.data, img.h, img.w, g, coverage, dst);
              }
              return out;
          },
          py::arg("mask"), py::arg("grid"), py::arg("coverage"));

    m.def("connected_components",
          [](py::handle image, int connectivity, bool with_ids) {
              Image img = image_arg(image, "mask_or_grid");
              py::array_t<int32_t> ids = with_ids ? py::array_t<int32_t>({img.h, img.w}) : py::array_t<int32_t>();
              int32_t* ids_ptr = with_ids ? ids.mutable_data() : nullptr;
              tam::Components c;
              {
                  py::gil_scoped_release unlocked;
                  c = tam::connected_components(img.data, img.h, img.w, connectivity, ids_ptr);
              }
              const py::ssize_t n = py::ssize_t(c.label.size());
              py::array_t<uint8_t> labels(n);
              py::array_t<int32_t> boxes({n, py::ssize_t(4)});
              py::array_t<int64_t> pixels(n);
              std::copy(c.label.begin(), c.label.end(), labels.mutable_data());
              std::copy(c.box.begin(), c.box.end(), boxes.mutable_data());
              std::copy(c.pixels.begin(), c.pixels.end(), pixels.mutable_data());
              return py::make_tuple(labels, boxes, pixels, with_ids ? py::object(ids) : py::object(py::none()));
          },
          py::arg("image"), py::arg("connectivity"), py::arg("with_ids"));
}
