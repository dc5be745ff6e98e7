// omniad_edge._native: private compiled core behind the omniad_edge.tam and omniad_edge.sampling facades.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_tam(py::module_& m);
void bind_sampling(py::module_& m);
void bind_decoder(py::module_& m);

PYBIND11_MODULE(_native, m) {
    m.doc() = "omniad_edge native core (private: use omniad_edge.tam and omniad_edge.sampling)";
    bind_tam(m);
    bind_sampling(m);
    bind_decoder(m);
}
