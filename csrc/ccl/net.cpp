#include "ccl/net.hpp"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

namespace pyhpc::ccl {

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

Clock::time_point after(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double>(seconds));
}

namespace {
int ms_until(Clock::time_point deadline) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return ms < 0 ? 0 : (ms > 1000000 ? 1000000 : int(ms) + 1);
}
}  // namespace

pyhpc_status random_bytes(void* out, size_t n) {
  int fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return PYHPC_FAIL(PYHPC_ERR_INTERNAL, "open /dev/urandom: %s", std::strerror(errno));
  uint8_t* p = static_cast<uint8_t*>(out);
  size_t got = 0;
  while (got < n) {
    ssize_t k = ::read(fd, p + got, n - got);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      ::close(fd);
      return PYHPC_FAIL(PYHPC_ERR_INTERNAL, "read /dev/urandom failed");
    }
    got += size_t(k);
  }
  ::close(fd);
  return PYHPC_OK;
}

void tune_socket(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
}

pyhpc_status set_nonblocking(int fd, bool on) {
  int flags = ::fcntl(fd, F_GETFL, 0);
  if (flags < 0 || ::fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) < 0)
    return PYHPC_FAIL(PYHPC_ERR_INTERNAL, "fcntl O_NONBLOCK: %s", std::strerror(errno));
  return PYHPC_OK;
}

namespace {
pyhpc_status resolve(const std::string& host, uint16_t port, bool passive, addrinfo** res) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  std::string service = std::to_string(port);
  int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, res);
  if (rc != 0)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "cannot resolve host '%s': %s", host.c_str(),
                      ::gai_strerror(rc));
  return PYHPC_OK;
}
}  // namespace

pyhpc_status listen_tcp(const std::string& host, uint16_t port, int* fd_out,
                        uint16_t* bound_port) {
  addrinfo* res = nullptr;
  PYHPC_CHECK(resolve(host, port, true, &res));
  int fd = -1;
  int err = 0;
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    fd = ::socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 128) == 0) break;
    err = errno;
    ::close(fd);
    fd = -1;
  }
  ::freeaddrinfo(res);
  if (fd < 0)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "cannot listen on %s:%u: %s", host.c_str(),
                      unsigned(port), std::strerror(err));
  tune_socket(fd);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  *bound_port = ss.ss_family == AF_INET6
                    ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                    : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  *fd_out = fd;
  return PYHPC_OK;
}

pyhpc_status connect_tcp(const std::string& host, uint16_t port, double timeout_s, int* fd_out) {
  addrinfo* res = nullptr;
  PYHPC_CHECK(resolve(host, port, false, &res));
  auto deadline = after(timeout_s);
  int err = ECONNREFUSED;
  int fd = -1;
  for (addrinfo* ai = res; ai && fd < 0; ai = ai->ai_next) {
    fd = ::socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    tune_socket(fd);
    set_nonblocking(fd, true);
    int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int pr;
      do pr = ::poll(&p, 1, ms_until(deadline));
      while (pr < 0 && errno == EINTR);
      if (pr == 0) {
        err = ETIMEDOUT;
        rc = -1;
      } else {
        socklen_t len = sizeof err;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        rc = err == 0 ? 0 : -1;
      }
    } else if (rc != 0) {
      err = errno;
    }
    if (rc != 0) {
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(res);
  if (fd < 0) {
    if (err == ETIMEDOUT)
      return PYHPC_FAIL(PYHPC_ERR_TIMEOUT, "connecting to master %s:%u timed out after %.3g s",
                        host.c_str(), unsigned(port), timeout_s);
    return PYHPC_FAIL(PYHPC_ERR_PEER, "cannot connect to master %s:%u: %s", host.c_str(),
                      unsigned(port), std::strerror(err));
  }
  set_nonblocking(fd, false);
  *fd_out = fd;
  return PYHPC_OK;
}

pyhpc_status send_all(int fd, const uint8_t* p, size_t n, Clock::time_point deadline) {
  size_t sent = 0;
  while (sent < n) {
    ssize_t k = ::send(fd, p + sent, n - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k > 0) {
      sent += size_t(k);
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (Clock::now() >= deadline)
        return PYHPC_FAIL(PYHPC_ERR_TIMEOUT, "send timed out (%zu of %zu bytes sent)", sent, n);
      pollfd pf{fd, POLLOUT, 0};
      ::poll(&pf, 1, ms_until(deadline));
      continue;
    }
    return PYHPC_FAIL(PYHPC_ERR_PEER, "connection lost while sending: %s",
                      std::strerror(k < 0 ? errno : EPIPE));
  }
  return PYHPC_OK;
}

namespace {
pyhpc_status recv_exact(int fd, uint8_t* p, size_t n, Clock::time_point deadline) {
  size_t got = 0;
  while (got < n) {
    pollfd pf{fd, POLLIN, 0};
    int pr = ::poll(&pf, 1, ms_until(deadline));
    if (pr < 0 && errno == EINTR) continue;
    if (pr == 0)
      return PYHPC_FAIL(PYHPC_ERR_TIMEOUT, "no message from the other side before the deadline");
    ssize_t k = ::recv(fd, p + got, n - got, MSG_DONTWAIT);
    if (k > 0) {
      got += size_t(k);
    } else if (k == 0) {
      return PYHPC_FAIL(PYHPC_ERR_PEER, "connection closed by the other side");
    } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
      return PYHPC_FAIL(PYHPC_ERR_PEER, "connection lost: %s", std::strerror(errno));
    }
  }
  return PYHPC_OK;
}
}  // namespace

pyhpc_status recv_frame(int fd, uint16_t version, Clock::time_point deadline, Message* out) {
  uint8_t hdr[kHeaderSize];
  PYHPC_CHECK(recv_exact(fd, hdr, kHeaderSize, deadline));
  Header h;
  PYHPC_CHECK(decode_header(hdr, kHeaderSize, version, &h));
  std::vector<uint8_t> payload(h.length);
  PYHPC_CHECK(recv_exact(fd, payload.data(), payload.size(), deadline));
  PYHPC_CHECK(decode_payload(h, payload.data(), payload.size(), out));
  return PYHPC_OK;
}

std::string peer_ip(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "";
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET6)
    ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, buf, sizeof buf);
  else
    ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, buf, sizeof buf);
  return buf;
}

void wake_and_join(std::thread& thread, int wake_write_fd) {
  if (!thread.joinable()) return;
  char b = 1;
  ssize_t ignored = ::write(wake_write_fd, &b, 1);
  (void)ignored;
  thread.join();
}

}  // namespace pyhpc::ccl
