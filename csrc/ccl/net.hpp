// Small POSIX socket helpers shared by the master and the peers.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "ccl/wire.hpp"
#include "common/status.hpp"

namespace pyhpc::ccl {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t);
Clock::time_point after(double seconds);

// Fills `n` bytes from the kernel's CSPRNG.
pyhpc_status random_bytes(void* out, size_t n);

// TCP_NODELAY (and close-on-exec) on an open socket.
void tune_socket(int fd);
pyhpc_status set_nonblocking(int fd, bool on);

// A listening TCP socket on host:port (port 0: any); `bound_port` gets the port.
pyhpc_status listen_tcp(const std::string& host, uint16_t port, int* fd, uint16_t* bound_port);
// A connected, tuned, blocking TCP socket, or TIMEOUT/PEER after `timeout_s`.
pyhpc_status connect_tcp(const std::string& host, uint16_t port, double timeout_s, int* fd);

// Writes the whole buffer before `deadline` (the socket may be blocking or not).
pyhpc_status send_all(int fd, const uint8_t* p, size_t n, Clock::time_point deadline);
// Reads and decodes one frame before `deadline`.
pyhpc_status recv_frame(int fd, uint16_t version, Clock::time_point deadline, Message* out);

// "ip" of the remote end of a connected socket.
std::string peer_ip(int fd);

// Wake a poll() loop through the write end of its wake pipe and join its thread
// (no-op when the thread is not running).
void wake_and_join(std::thread& thread, int wake_write_fd);

}  // namespace pyhpc::ccl
