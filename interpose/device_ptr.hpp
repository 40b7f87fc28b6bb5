// Is a pointer GPU memory? Asked of the CUDA driver through dlopen, so the
// interposer needs no CUDA at build or run time: with no driver, or a driver
// never initialised by the application, every pointer is host memory.
#pragma once

namespace pyhpc::interpose {

bool is_device_pointer(const void* p);

}  // namespace pyhpc::interpose
