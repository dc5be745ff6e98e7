// The one conversion helper between numpy arguments and the C++ core: every array argument is checked here
// (type, dtype, rank, contiguity) and reported with its name, so the core only ever sees valid contiguous buffers.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <initializer_list>
#include <string>

namespace omniad::py_buffers {

namespace py = pybind11;

enum class Kind { F32, F16, F64, U8, Bool, I64, U32 };

inline const char* kind_name(Kind k) {
    switch (k) {
        case Kind::F32: return "float32";
        case Kind::F16: return "float16";
        case Kind::F64: return "float64";
        case Kind::U8: return "uint8";
        case Kind::Bool: return "bool";
        case Kind::I64: return "int64";
        case Kind::U32: return "uint32";
    }
    return "?";
}

inline bool has_kind(const py::array& a, Kind k) {
    const py::dtype dt = a.dtype();
    const char c = dt.kind();
    const auto size = dt.itemsize();
    switch (k) {
        case Kind::F32: return c == 'f' && size == 4;
        case Kind::F16: return c == 'f' && size == 2;
        case Kind::F64: return c == 'f' && size == 8;
        case Kind::U8: return c == 'u' && size == 1;
        case Kind::Bool: return c == 'b';
        case Kind::I64: return c == 'i' && size == 8;
        case Kind::U32: return c == 'u' && size == 4;
    }
    return false;
}

inline std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

struct Checked {
    py::array array;
    Kind kind;
    const void* data() const { return array.data(); }
    py::ssize_t dim(int i) const { return array.shape(i); }
    int ndim() const { return int(array.ndim()); }
};

// Checks obj is a C-contiguous numpy array of one of `kinds` with min_rank..max_rank dimensions.
inline Checked require(py::handle obj, const char* name, std::initializer_list<Kind> kinds, int min_rank,
                       int max_rank) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                             std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
    py::array a = py::reinterpret_borrow<py::array>(obj);
    std::string expected;
    for (Kind k : kinds) {
        if (has_kind(a, k)) {
            if (a.ndim() < min_rank || a.ndim() > max_rank)
                throw py::value_error(std::string(name) + " must have " + std::to_string(min_rank) +
                                      (min_rank == max_rank ? "" : ".." + std::to_string(max_rank)) +
                                      " dimensions, got shape " + shape_str(a));
            if (!a.dtype().attr("isnative").cast<bool>())
                throw py::type_error(std::string(name) + " must be in native byte order (use .astype(" +
                                     "dtype.newbyteorder('='))), got " + std::string(py::str(a.dtype())));
            if (!(a.flags() & py::array::c_style))
                throw py::value_error(std::string(name) +
                                      " must be C-contiguous (pass numpy.ascontiguousarray(...))");
            return {a, k};
        }
        expected += std::string(expected.empty() ? "" : " or ") + kind_name(k);
    }
    throw py::type_error(std::string(name) + " must have dtype " + expected + ", got " +
                         std::string(py::str(a.dtype())));
}

}  // namespace omniad::py_buffers
