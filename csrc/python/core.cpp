// pyhpc._core: bindings for the host C++ cores. Bindings only: argument
// conversion and status -> exception; the work happens in csrc/<capability>/.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bench/memcpy_limit.hpp"
#include "common/mpi_info.hpp"
#include "common/status.hpp"
#include "python/raise_status.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyhpc C++ cores (host)";

  m.def("mpi_build_info", [] {
    pyhpc::MpiBuildInfo info = pyhpc::mpi_build_info();
    py::dict d;
    d["vendor"] = info.vendor;
    d["version"] = info.version;
    d["standard"] = std::to_string(info.standard_version) + "." +
                    std::to_string(info.standard_subversion);
    return d;
  }, "The MPI this module was compiled against (from mpi.h).");

  m.def("mpi_loaded_library_version", &pyhpc::mpi_loaded_library_version,
        "MPI_Get_library_version() of the libmpi loaded in this process.");

  m.def("status_names", [] {
    py::dict d;
    for (int s = PYHPC_OK; s <= PYHPC_ERR_INTERNAL; ++s)
      d[py::int_(s)] = pyhpc_status_name(static_cast<pyhpc_status>(s));
    return d;
  }, "Every pyhpc_status code and its C name.");

  m.def("memcpy_seconds", [](size_t nbytes, int warmup, int reps) {
    std::vector<double> seconds;
    pyhpc_status s;
    {
      py::gil_scoped_release release;
      s = pyhpc::bench::memcpy_seconds(nbytes, warmup, reps, &seconds);
    }
    pyhpc::check(s);
    return seconds;
  }, py::arg("nbytes"), py::arg("warmup"), py::arg("reps"),
     "Seconds of one memcpy of nbytes per repetition, timed in C++ (the memcpy limit).");

  // Exercises the binding edge end to end: a core failure with a trail of
  // PYHPC_CHECK sites becomes the pyhpc.Error subclass for `code`.
  m.def("_raise_status_for_test", [](int code, const std::string& text) {
    auto inner = [&]() -> pyhpc_status {
      return PYHPC_FAIL(static_cast<pyhpc_status>(code), "%s", text.c_str());
    };
    auto outer = [&]() -> pyhpc_status {
      PYHPC_CHECK(inner());
      return PYHPC_OK;
    };
    pyhpc::check(outer());
  });
}
