// Completion calls: each one forwards to PMPI_* and then finishes the requests
// of ours that completed (unpack a receive, free its staging buffer). When no
// request of ours is outstanding they cost one atomic load beyond the system
// MPI. Handles are captured before the call: the system MPI sets completed
// ones to MPI_REQUEST_NULL (persistent ones stay, inactive).
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

bool in_status(int rc) {
  int error_class = MPI_SUCCESS;
  return rc != MPI_SUCCESS && PMPI_Error_class(rc, &error_class) == MPI_SUCCESS &&
         error_class == MPI_ERR_IN_STATUS;
}

// A request that completed with an error is finished without unpacking (a
// persistent one becomes inactive again); MPI_ERR_PENDING means not completed.
void complete_one(MPI_Request original, const MPI_Status* status, int error) {
  if (error != MPI_ERR_PENDING) pi::complete(original, status, error == MPI_SUCCESS);
}

// The requests[indices[k]] (original handles) that a multiple-completion call
// completed: with MPI_SUCCESS all listed; with MPI_ERR_IN_STATUS each by its
// status; after any other error MPI says nothing about them.
void complete_listed(const std::vector<MPI_Request>& original, int rc, const MPI_Status* statuses, int n,
                     const int* indices) {
  if (rc != MPI_SUCCESS && !in_status(rc)) return;
  for (int k = 0; k < n; ++k) {
    const size_t i = indices ? static_cast<size_t>(indices[k]) : static_cast<size_t>(k);
    complete_one(original[i], &statuses[k], rc == MPI_SUCCESS ? MPI_SUCCESS : statuses[k].MPI_ERROR);
  }
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
  pi::complete(original, st, rc == MPI_SUCCESS);
  return rc;
}

PYHPC_EXPORT int MPI_Test(MPI_Request* request, int* flag, MPI_Status* status) {
  pi::count(pi::kTest);
  if (!pi::any_tracked() || request == nullptr || flag == nullptr) return PMPI_Test(request, flag, status);
  pi::progress_orphans();
  const MPI_Request original = *request;
  MPI_Status local;
  MPI_Status* st = status == MPI_STATUS_IGNORE ? &local : status;
  *flag = 0;
  int rc = PMPI_Test(request, flag, st);
  if (rc != MPI_SUCCESS || *flag) pi::complete(original, st, rc == MPI_SUCCESS);
  return rc;
}

PYHPC_EXPORT int MPI_Waitall(int count, MPI_Request requests[], MPI_Status statuses[]) {
  pi::count(pi::kWait);
  if (!pi::any_tracked() || count <= 0 || requests == nullptr) return PMPI_Waitall(count, requests, statuses);
  pi::progress_orphans();
  std::vector<MPI_Request> original(requests, requests + count);
  Statuses st(statuses, count);
  int rc = PMPI_Waitall(count, requests, st.get());
  complete_listed(original, rc, st.get(), count, nullptr);
  return rc;
}

PYHPC_EXPORT int MPI_Testall(int count, MPI_Request requests[], int* flag, MPI_Status statuses[]) {
  pi::count(pi::kTest);
  if (!pi::any_tracked() || count <= 0 || requests == nullptr || flag == nullptr)
    return PMPI_Testall(count, requests, flag, statuses);
  pi::progress_orphans();
  std::vector<MPI_Request> original(requests, requests + count);
  Statuses st(statuses, count);
  *flag = 0;
  int rc = PMPI_Testall(count, requests, flag, st.get());
  if (*flag || in_status(rc)) complete_listed(original, rc, st.get(), count, nullptr);
  return rc;
}

namespace {
// Waitany / Testany: the one request completed, if any.
template <class Any>
int any(int count, MPI_Request requests[], int* index, int* flag, MPI_Status* status, Any system) {
  pi::progress_orphans();
  std::vector<MPI_Request> original(requests, requests + count);
  MPI_Status local;
  MPI_Status* st = status == MPI_STATUS_IGNORE ? &local : status;
  *index = MPI_UNDEFINED;
  int rc = system(requests, index, st);
  if (*index >= 0 && *index < count && (rc != MPI_SUCCESS || *flag))
    pi::complete(original[static_cast<size_t>(*index)], st, rc == MPI_SUCCESS);
  return rc;
}
}  // namespace

PYHPC_EXPORT int MPI_Waitany(int count, MPI_Request requests[], int* index, MPI_Status* status) {
  pi::count(pi::kWait);
  if (!pi::any_tracked() || count <= 0 || requests == nullptr || index == nullptr)
    return PMPI_Waitany(count, requests, index, status);
  int done = 1;
  return any(count, requests, index, &done, status, [count](MPI_Request* r, int* i, MPI_Status* s) {
    return PMPI_Waitany(count, r, i, s);
  });
}

PYHPC_EXPORT int MPI_Testany(int count, MPI_Request requests[], int* index, int* flag, MPI_Status* status) {
  pi::count(pi::kTest);
  if (!pi::any_tracked() || count <= 0 || requests == nullptr || index == nullptr || flag == nullptr)
    return PMPI_Testany(count, requests, index, flag, status);
  *flag = 0;
  return any(count, requests, index, flag, status, [count, flag](MPI_Request* r, int* i, MPI_Status* s) {
    return PMPI_Testany(count, r, i, flag, s);
  });
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
  *outcount = MPI_UNDEFINED;
  int rc = system(incount, requests, outcount, indices, st.get());
  if (*outcount != MPI_UNDEFINED) complete_listed(original, rc, st.get(), *outcount, indices);
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
      // An inactive persistent request: free the handle, then its staging.
      if (pending->persistent && !pending->active) return PMPI_Request_free(request);
      // The staging buffer must outlive the transfer: complete it ourselves later.
      pi::orphan(*request, std::move(pending));
      *request = MPI_REQUEST_NULL;
      return MPI_SUCCESS;
    }
  }
  return PMPI_Request_free(request);
}
