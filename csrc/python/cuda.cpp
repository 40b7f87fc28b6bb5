// pyhpc._cuda: bindings for the CUDA cores. Built only when CUDA is enabled and
// imported lazily (pyhpc.cuda), so `import pyhpc` never needs a GPU or driver.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cuda/device.hpp"
#include "python/raise_status.hpp"

namespace py = pybind11;
namespace pc = pyhpc::cuda;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "pyhpc CUDA cores";

  m.def("device_count", [] {
    int n = 0;
    pyhpc::check(pc::device_count(&n));
    return n;
  });

  m.def("device_info", [](int index) {
    pc::DeviceInfo info{};
    pyhpc::check(pc::device_info(index, &info));
    py::dict d;
    d["index"] = info.index;
    d["name"] = info.name;
    d["compute_capability"] = py::make_tuple(info.major, info.minor);
    d["total_memory"] = info.total_memory;
    d["multiprocessors"] = info.multiprocessors;
    return d;
  }, py::arg("index"));

  m.def("versions", [] {
    int runtime = 0, driver = 0;
    pyhpc::check(pc::versions(&runtime, &driver));
    return py::make_tuple(runtime, driver);
  }, "(runtime, driver) CUDA versions; driver is 0 when no driver is present.");

  m.def("d2d_copy_seconds", [](int device, size_t nbytes, int reps) {
    std::vector<double> seconds;
    pyhpc_status s;
    {
      py::gil_scoped_release release;
      s = pc::d2d_copy_seconds(device, nbytes, reps, &seconds);
    }
    pyhpc::check(s);
    return seconds;
  }, py::arg("device"), py::arg("nbytes"), py::arg("reps"));
}
