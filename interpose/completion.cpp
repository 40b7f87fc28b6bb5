// Completion calls: each one forwards to PMPI_* and then finishes the requests
// of ours that completed (unpack a receive, free its staging buffer). When no
// request of ours is outstanding they cost one atomic load beyond the system
// MPI. Handles are captured before the call: the system MPI sets completed
// ones to MPI_REQUEST_NULL.
#include <vector>

#include "interpose/requests.hpp"
#include "interpose/state.hpp"

namespace pi = pyhpc::interpose;

namespace {

// Statuses the caller may have told MPI to ignore, which finishing a receive needs.
class Statuses {
 public:
  Statuses(MPI_Status* user, int n) : ptr_(user) {
    if (user == MPI_STATUSES_IGNORE) {
      local_.resize(static_cast<size_t>(n > 0 ? n : 1));
      ptr_ = local_.data();
    }
  }
  MPI_Status* get() { return ptr_; }

 private:
  std::vector<MPI_Status> local_;
  MPI_Status* ptr_;
};

void finish_if_ours(MPI_Request original, const MPI_Status* status) {
  if (auto pending = pi::take(original)) pi::finish(*pending, status);
}

}  // namespace

PYHPC_EXPORT int MPI_Wait(MPI_Request* request, MPI_Status* status) {
  pi::count(pi::kWait);
  if (!pi::any_tracked() || request == nullptr) return PMPI_Wait(request, status);
  pi::progress_orphans();
  const MPI_Request original = *request;
  MPI_Status local;
  MPI_Status* st = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Wait(request, st);
  if (rc == MPI_SUCCESS) finish_if_ours(original, st);
  return rc;
}

PYHPC_EXPORT int MPI_Test(MPI_Request* request, int* flag, MPI_Status* status) {
  pi::count(pi::kTest);
  if (!pi::any_tracked() || request == nullptr || flag == nullptr) return PMPI_Test(request, flag, status);
  pi::progress_orphans();
  const MPI_Request original = *request;
  MPI_Status local;
  MPI_Status* st = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Test(request, flag, st);
  if (rc == MPI_SUCCESS && *flag) finish_if_ours(original, st);
  return rc;
}

PYHPC_EXPORT int MPI_Waitall(int count, MPI_Request requests[], MPI_Status statuses[]) {
  pi::count(pi::kWait);
  if (!pi::any_tracked() || count <= 0 || requests == nullptr) return PMPI_Waitall(count, requests, statuses);
  pi::progress_orphans();
  std::vector<MPI_Request> original(requests, requests + count);
  Statuses st(statuses, count);
  int rc = PMPI_Waitall(count, requests, st.get());
  for (int i = 0; i < count; ++i) {
    // With MPI_ERR_IN_STATUS some may have failed: finish only those that completed fine.
    const bool ok = rc == MPI_SUCCESS || st.get()[i].MPI_ERROR == MPI_SUCCESS;
    if (ok && requests[i] == MPI_REQUEST_NULL) finish_if_ours(original[static_cast<size_t>(i)], &st.get()[i]);
  }
  return rc;
}

PYHPC_EXPORT int MPI_Testall(int count, MPI_Request requests[], int* flag, MPI_Status statuses[]) {
  pi::count(pi::kTest);
  if (!pi::any_tracked() || count <= 0 || requests == nullptr || flag == nullptr)
    return PMPI_Testall(count, requests, flag, statuses);
  pi::progress_orphans();
  std::vector<MPI_Request> original(requests, requests + count);
  Statuses st(statuses, count);
  int rc = PMPI_Testall(count, requests, flag, st.get());
  if (*flag) {
    for (int i = 0; i < count; ++i) {
      const bool ok = rc == MPI_SUCCESS || st.get()[i].MPI_ERROR == MPI_SUCCESS;
      if (ok && requests[i] == MPI_REQUEST_NULL) finish_if_ours(original[static_cast<size_t>(i)], &st.get()[i]);
    }
  }
  return rc;
}

PYHPC_EXPORT int MPI_Waitany(int count, MPI_Request requests[], int* index, MPI_Status* status) {
  pi::count(pi::kWait);
  if (!pi::any_tracked() || count <= 0 || requests == nullptr || index == nullptr)
    return PMPI_Waitany(count, requests, index, status);
  pi::progress_orphans();
  std::vector<MPI_Request> original(requests, requests + count);
  MPI_Status local;
  MPI_Status* st = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Waitany(count, requests, index, st);
  if (rc == MPI_SUCCESS && *index != MPI_UNDEFINED) finish_if_ours(original[static_cast<size_t>(*index)], st);
  return rc;
}

PYHPC_EXPORT int MPI_Testany(int count, MPI_Request requests[], int* index, int* flag, MPI_Status* status) {
  pi::count(pi::kTest);
  if (!pi::any_tracked() || count <= 0 || requests == nullptr || index == nullptr || flag == nullptr)
    return PMPI_Testany(count, requests, index, flag, status);
  pi::progress_orphans();
  std::vector<MPI_Request> original(requests, requests + count);
  MPI_Status local;
  MPI_Status* st = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Testany(count, requests, index, flag, st);
  if (rc == MPI_SUCCESS && *flag && *index != MPI_UNDEFINED)
    finish_if_ours(original[static_cast<size_t>(*index)], st);
  return rc;
}

namespace {
template <class Some>
int some(int incount, MPI_Request requests[], int* outcount, int indices[], MPI_Status statuses[],
         Some system) {
  if (!pi::any_tracked() || incount <= 0 || requests == nullptr || outcount == nullptr || indices == nullptr)
    return system(incount, requests, outcount, indices, statuses);
  pi::progress_orphans();
  std::vector<MPI_Request> original(requests, requests + incount);
  Statuses st(statuses, incount);
  int rc = system(incount, requests, outcount, indices, st.get());
  if (*outcount != MPI_UNDEFINED) {
    for (int k = 0; k < *outcount; ++k) {
      const bool ok = rc == MPI_SUCCESS || st.get()[k].MPI_ERROR == MPI_SUCCESS;
      if (ok) finish_if_ours(original[static_cast<size_t>(indices[k])], &st.get()[k]);
    }
  }
  return rc;
}
}  // namespace

PYHPC_EXPORT int MPI_Waitsome(int incount, MPI_Request requests[], int* outcount, int indices[],
                              MPI_Status statuses[]) {
  pi::count(pi::kWait);
  return some(incount, requests, outcount, indices, statuses, PMPI_Waitsome);
}

PYHPC_EXPORT int MPI_Testsome(int incount, MPI_Request requests[], int* outcount, int indices[],
                              MPI_Status statuses[]) {
  pi::count(pi::kTest);
  return some(incount, requests, outcount, indices, statuses, PMPI_Testsome);
}

PYHPC_EXPORT int MPI_Request_free(MPI_Request* request) {
  pi::count(pi::kRequestFree);
  if (pi::any_tracked() && request != nullptr) {
    if (auto pending = pi::take(*request)) {
      // The staging buffer must outlive the transfer: complete it ourselves later.
      pi::orphan(*request, std::move(pending));
      *request = MPI_REQUEST_NULL;
      return MPI_SUCCESS;
    }
  }
  return PMPI_Request_free(request);
}
