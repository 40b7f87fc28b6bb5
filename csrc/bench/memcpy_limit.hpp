// The memcpy physical limit measured in C++: what one copy of n bytes costs
// with no interpreter in the way (numpy's per-call cost would dominate small
// sizes and make the "limit" a measure of Python).
#pragma once

#include <cstddef>
#include <vector>

#include "common/status.hpp"

namespace pyhpc::bench {

// seconds[i] = time of one memcpy of nbytes in repetition i; small copies run
// in batches of many copies per repetition (time / copies).
pyhpc_status memcpy_seconds(size_t nbytes, int warmup, int reps, std::vector<double>* seconds);

}  // namespace pyhpc::bench
