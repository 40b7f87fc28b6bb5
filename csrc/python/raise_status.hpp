// The one place a pyhpc_status becomes a Python exception: pyhpc.errors builds
// the right pyhpc.Error subclass, so C++ and Cython bindings raise alike.
#pragma once

#include <pybind11/pybind11.h>

#include "common/status.hpp"

namespace pyhpc {

[[noreturn]] inline void raise_status(pyhpc_status status) {
  namespace py = pybind11;
  py::object from_status = py::module_::import("pyhpc.errors").attr("from_status");
  py::object exc = from_status(static_cast<int>(status), last_error());
  clear_last_error();
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  throw py::error_already_set();
}

inline void check(pyhpc_status status) {
  if (status != PYHPC_OK) raise_status(status);
}

}  // namespace pyhpc
