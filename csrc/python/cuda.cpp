// pyhpc._cuda: bindings for the CUDA cores. Built only when CUDA is enabled and
// imported lazily (pyhpc.cuda), so `import pyhpc` never needs a GPU or driver.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cuda/device.hpp"
#include "datatype/pack_cuda.hpp"
#include "python/raise_status.hpp"

namespace py = pybind11;
namespace pc = pyhpc::cuda;
namespace pd = pyhpc::datatype;

namespace {

// The dict pyhpc._mpi.canonicalize returns, back into the C++ struct it came
// from (that dict is the one layout format Python code holds).
pd::Canonical canonical_from(const py::dict& layout) {
  auto get = [&](const char* key) -> py::object {
    if (!layout.contains(key))
      pyhpc::raise_status(PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                                     "layout: no key '%s' (pass what pyhpc._mpi.canonicalize returns)", key));
    return layout[key];
  };
  pd::Canonical c;
  c.supported = get("supported").cast<bool>();
  c.why_not = get("why_not").cast<std::string>();
  c.layout.offset = get("offset").cast<int64_t>();
  c.layout.block = get("block").cast<int64_t>();
  auto counts = get("counts").cast<std::vector<int64_t>>();
  auto strides = get("strides").cast<std::vector<int64_t>>();
  if (counts.size() != strides.size() || counts.size() > static_cast<size_t>(pd::kMaxDims))
    pyhpc::raise_status(PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                                   "layout: %zu counts and %zu strides; need equal numbers, at most %d",
                                   counts.size(), strides.size(), pd::kMaxDims));
  c.layout.ndims = static_cast<int>(counts.size());
  for (size_t d = 0; d < counts.size(); ++d) {
    c.layout.count[d] = counts[d];
    c.layout.stride[d] = strides[d];
  }
  c.lb = get("lb").cast<int64_t>();
  c.extent = get("extent").cast<int64_t>();
  c.size = get("size").cast<int64_t>();
  return c;
}

void* address(std::uintptr_t p) { return reinterpret_cast<void*>(p); }
cudaStream_t stream_of(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace

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

  m.def("pack", [](const py::dict& layout, int64_t count, std::uintptr_t buf, int64_t buf_len,
                   std::uintptr_t out, int64_t out_len, std::uintptr_t stream) {
    const pd::Canonical c = canonical_from(layout);
    pyhpc_status s;
    {
      py::gil_scoped_release release;
      s = pd::pack_device(c, count, address(buf), buf_len, address(out), out_len, stream_of(stream));
    }
    pyhpc::check(s);
  }, py::arg("layout"), py::arg("count"), py::arg("buf"), py::arg("buf_len"), py::arg("out"),
     py::arg("out_len"), py::arg("stream") = 0,
     "Enqueues on `stream` (a cudaStream_t as an int; 0 is the legacy default stream) the\n"
     "packing of `count` elements of the layout (a dict from pyhpc._mpi.canonicalize) read\n"
     "from device address buf[0, buf_len) into out[0, out_len) (device or pinned host).\n"
     "Does not synchronise: the caller must before reading `out`.");

  m.def("unpack", [](const py::dict& layout, int64_t count, std::uintptr_t packed, int64_t packed_len,
                     std::uintptr_t buf, int64_t buf_len, std::uintptr_t stream) {
    const pd::Canonical c = canonical_from(layout);
    pyhpc_status s;
    {
      py::gil_scoped_release release;
      s = pd::unpack_device(c, count, address(packed), packed_len, address(buf), buf_len,
                            stream_of(stream));
    }
    pyhpc::check(s);
  }, py::arg("layout"), py::arg("count"), py::arg("packed"), py::arg("packed_len"), py::arg("buf"),
     py::arg("buf_len"), py::arg("stream") = 0,
     "Enqueues on `stream` the unpacking of packed[0, packed_len) (device or pinned host) into\n"
     "`count` elements of the layout over device address buf[0, buf_len). Does not synchronise.");
}
