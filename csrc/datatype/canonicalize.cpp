#include "datatype/canonicalize.hpp"

#include <vector>

#include "common/mpi_check.hpp"

namespace pyhpc::datatype {

// MPI is called through its PMPI_ names here: under the interposer these
// queries (and the frees of the handles they return) must not re-enter
// pyhpc's own MPI_* overrides.

namespace {

// What MPI_Type_get_contents returned for one constructor, as one list of its
// integer and address arguments in the constructor's argument order (e.g.
// hvector: count, blocklength, stride), whether MPI stored them as ints and
// addresses or, for a large-count constructor (MPI 4: mpi4py uses them where
// MPICH has them), as MPI_Count. Derived datatypes MPI hands out here are new
// handles and are freed on destruction; named ones must not be.
struct Contents {
  int combiner = MPI_COMBINER_NAMED;
  std::vector<int64_t> args;
  std::vector<MPI_Datatype> types;

  ~Contents() {
    for (MPI_Datatype& t : types) {
      int ni, na, nd, combiner;
      if (envelope(t, &ni, &na, &nd, &combiner) == MPI_SUCCESS && combiner != MPI_COMBINER_NAMED)
        PMPI_Type_free(&t);
    }
  }

  // Which MPI 4 large-count handles need: MPI_Type_get_envelope refuses them.
  static int envelope(MPI_Datatype t, int* ni, int* na, int* nd, int* combiner) {
#if MPI_VERSION >= 4
    MPI_Count ci, ca, cc, cd;
    int rc = PMPI_Type_get_envelope_c(t, &ci, &ca, &cc, &cd, combiner);
    *ni = static_cast<int>(ci);
    *na = static_cast<int>(ca);
    *nd = static_cast<int>(cd);
    return rc;
#else
    return PMPI_Type_get_envelope(t, ni, na, nd, combiner);
#endif
  }
};

pyhpc_status get_contents(MPI_Datatype type, Contents* c) {
#if MPI_VERSION >= 4
  MPI_Count ni = 0, na = 0, nc = 0, nd = 0;
  PYHPC_MPI_CHECK(PMPI_Type_get_envelope_c(type, &ni, &na, &nc, &nd, &c->combiner));
  if (c->combiner == MPI_COMBINER_NAMED) return PYHPC_OK;
  std::vector<int> ints(static_cast<size_t>(ni));
  std::vector<MPI_Aint> addrs(static_cast<size_t>(na));
  std::vector<MPI_Count> counts(static_cast<size_t>(nc));
  c->types.resize(static_cast<size_t>(nd));
  PYHPC_MPI_CHECK(PMPI_Type_get_contents_c(type, ni, na, nc, nd, ints.data(), addrs.data(),
                                          counts.data(), c->types.data()));
  if (nc > 0 && c->combiner == MPI_COMBINER_SUBARRAY && ints.size() == 2) {
    // Large-count subarray: ints = {ndims, order}, counts = {sizes, subsizes, starts}.
    c->args.push_back(ints[0]);
    c->args.insert(c->args.end(), counts.begin(), counts.end());
    c->args.push_back(ints[1]);
    return PYHPC_OK;
  }
  c->args.assign(ints.begin(), ints.end());
  c->args.insert(c->args.end(), addrs.begin(), addrs.end());
  c->args.insert(c->args.end(), counts.begin(), counts.end());
#else
  int ni = 0, na = 0, nd = 0;
  PYHPC_MPI_CHECK(PMPI_Type_get_envelope(type, &ni, &na, &nd, &c->combiner));
  if (c->combiner == MPI_COMBINER_NAMED) return PYHPC_OK;
  std::vector<int> ints(static_cast<size_t>(ni));
  std::vector<MPI_Aint> addrs(static_cast<size_t>(na));
  c->types.resize(static_cast<size_t>(nd));
  PYHPC_MPI_CHECK(PMPI_Type_get_contents(type, ni, na, nd, ints.data(), addrs.data(), c->types.data()));
  c->args.assign(ints.begin(), ints.end());
  c->args.insert(c->args.end(), addrs.begin(), addrs.end());
#endif
  return PYHPC_OK;
}

// Result of describing one level: a layout, or the reason there is none.
struct Described {
  bool ok = false;
  std::string why;
  Strided layout;
};

Described unsupported(std::string why) {
  Described d;
  d.why = std::move(why);
  return d;
}

// Prepends this constructor's own dimensions (outermost first) to the layout
// of its old type, shifted by `offset`.
Described nest(const Described& inner, std::initializer_list<std::pair<int64_t, int64_t>> dims,
               int64_t offset) {
  if (!inner.ok) return inner;
  Described out = inner;
  const int add = static_cast<int>(dims.size());
  if (inner.layout.ndims + add > kMaxDims) {
    Strided t = inner.layout;
    simplify(&t);
    if (t.ndims + add > kMaxDims) return unsupported("more than 8 strided dimensions");
    out.layout = t;
  }
  Strided& s = out.layout;
  for (int d = s.ndims - 1; d >= 0; --d) {
    s.count[d + add] = s.count[d];
    s.stride[d + add] = s.stride[d];
  }
  int d = 0;
  for (const auto& [count, stride] : dims) {
    s.count[d] = count;
    s.stride[d] = stride;
    ++d;
  }
  s.ndims += add;
  s.offset += offset;
  return out;
}

// Step between consecutive displacements if it is the same for all, else false.
bool constant_step(const int64_t* displs, int64_t n, int64_t* step) {
  *step = n > 1 ? displs[1] - displs[0] : 0;
  for (int64_t i = 2; i < n; ++i)
    if (displs[i] - displs[i - 1] != *step) return false;
  return true;
}

pyhpc_status describe(MPI_Datatype type, int depth, Described* out);

pyhpc_status extent_of(MPI_Datatype type, int64_t* extent) {
  MPI_Aint lb = 0, ext = 0;
  PYHPC_MPI_CHECK(PMPI_Type_get_extent(type, &lb, &ext));
  *extent = static_cast<int64_t>(ext);
  return PYHPC_OK;
}

pyhpc_status describe_named(MPI_Datatype type, Described* out) {
  int size = 0;
  MPI_Aint lb = 0, extent = 0;
  PYHPC_MPI_CHECK(PMPI_Type_size(type, &size));
  PYHPC_MPI_CHECK(PMPI_Type_get_extent(type, &lb, &extent));
  // Pair types such as MPI_DOUBLE_INT have padding between their members.
  if (lb != 0 || extent != size) {
    *out = unsupported("a predefined type with gaps (size " + std::to_string(size) + ", extent " +
                       std::to_string(extent) + ")");
    return PYHPC_OK;
  }
  out->ok = true;
  out->layout = Strided{};
  out->layout.block = size;
  return PYHPC_OK;
}

pyhpc_status describe(MPI_Datatype type, int depth, Described* out) {
  if (depth > 64) {
    *out = unsupported("nesting deeper than 64 constructors");
    return PYHPC_OK;
  }
  Contents c;
  PYHPC_CHECK(get_contents(type, &c));
  if (c.combiner == MPI_COMBINER_NAMED) return describe_named(type, out);

  // Every constructor below has exactly one old type.
  switch (c.combiner) {
    case MPI_COMBINER_DUP:
    case MPI_COMBINER_CONTIGUOUS:
    case MPI_COMBINER_VECTOR:
    case MPI_COMBINER_HVECTOR:
    case MPI_COMBINER_INDEXED:
    case MPI_COMBINER_HINDEXED:
    case MPI_COMBINER_INDEXED_BLOCK:
    case MPI_COMBINER_HINDEXED_BLOCK:
    case MPI_COMBINER_SUBARRAY:
    case MPI_COMBINER_RESIZED:
      break;
    default:
      *out = unsupported("constructor (combiner " + std::to_string(c.combiner) +
                         ") without a strided form, e.g. struct or darray");
      return PYHPC_OK;
  }
  Described inner;
  PYHPC_CHECK(describe(c.types.at(0), depth + 1, &inner));
  if (!inner.ok) {
    *out = inner;
    return PYHPC_OK;
  }
  int64_t old_extent = 0;
  PYHPC_CHECK(extent_of(c.types[0], &old_extent));
  // Arguments in constructor order (see Contents); all in elements of the old
  // type except the h* displacements and strides, which are bytes.
  const std::vector<int64_t>& v = c.args;
  auto arg = [&](size_t i) { return v.at(i); };

  switch (c.combiner) {
    case MPI_COMBINER_DUP:
    case MPI_COMBINER_RESIZED:  // same bytes; only the spacing of repeated elements changes
      *out = inner;
      return PYHPC_OK;
    case MPI_COMBINER_CONTIGUOUS:
      *out = nest(inner, {{arg(0), old_extent}}, 0);
      return PYHPC_OK;
    case MPI_COMBINER_VECTOR:
      *out = nest(inner, {{arg(0), arg(2) * old_extent}, {arg(1), old_extent}}, 0);
      return PYHPC_OK;
    case MPI_COMBINER_HVECTOR:
      *out = nest(inner, {{arg(0), arg(2)}, {arg(1), old_extent}}, 0);
      return PYHPC_OK;
    case MPI_COMBINER_INDEXED_BLOCK:
    case MPI_COMBINER_HINDEXED_BLOCK: {  // count, blocklength, displacements[count]
      const int64_t count = arg(0), blocklen = arg(1);
      const int64_t* displs = v.data() + 2;
      int64_t step = 0;
      if (!constant_step(displs, count, &step)) {
        *out = unsupported("indexed_block displacements without a constant step");
        return PYHPC_OK;
      }
      const int64_t unit = c.combiner == MPI_COMBINER_HINDEXED_BLOCK ? 1 : old_extent;
      const int64_t first = count == 0 ? 0 : displs[0];
      *out = nest(inner, {{count, step * unit}, {blocklen, old_extent}}, first * unit);
      return PYHPC_OK;
    }
    case MPI_COMBINER_INDEXED:
    case MPI_COMBINER_HINDEXED: {  // count, blocklengths[count], displacements[count]
      const int64_t count = arg(0);
      const int64_t* blocklens = v.data() + 1;
      const int64_t* displs = v.data() + 1 + count;
      for (int64_t i = 1; i < count; ++i) {
        if (blocklens[i] != blocklens[0]) {
          *out = unsupported("indexed block lengths that differ");
          return PYHPC_OK;
        }
      }
      int64_t step = 0;
      if (!constant_step(displs, count, &step)) {
        *out = unsupported("indexed displacements without a constant step");
        return PYHPC_OK;
      }
      const int64_t unit = c.combiner == MPI_COMBINER_HINDEXED ? 1 : old_extent;
      const int64_t blocklen = count == 0 ? 0 : blocklens[0];
      const int64_t first = count == 0 ? 0 : displs[0];
      *out = nest(inner, {{count, step * unit}, {blocklen, old_extent}}, first * unit);
      return PYHPC_OK;
    }
    case MPI_COMBINER_SUBARRAY: {  // ndims, sizes[n], subsizes[n], starts[n], order
      const int n = static_cast<int>(arg(0));
      if (n > kMaxDims) {
        *out = unsupported("subarray of more than 8 dimensions");
        return PYHPC_OK;
      }
      const int64_t* sizes = v.data() + 1;
      const int64_t* subsizes = v.data() + 1 + n;
      const int64_t* starts = v.data() + 1 + 2 * n;
      const bool c_order = arg(1 + 3 * static_cast<size_t>(n)) == MPI_ORDER_C;
      // Byte stride of each array dimension, fastest-varying dimension first.
      int64_t stride[kMaxDims];
      int64_t span = old_extent;
      for (int k = 0; k < n; ++k) {
        const int dim = c_order ? n - 1 - k : k;
        stride[dim] = span;
        span *= sizes[dim];
      }
      Described acc = inner;
      int64_t offset = 0;
      for (int k = 0; k < n && acc.ok; ++k) {  // prepend fastest first: ends slowest-first
        const int dim = c_order ? n - 1 - k : k;
        acc = nest(acc, {{subsizes[dim], stride[dim]}}, 0);
        offset += starts[dim] * stride[dim];
      }
      if (acc.ok) acc.layout.offset += offset;
      *out = acc;
      return PYHPC_OK;
    }
    default:
      break;
  }
  return PYHPC_FAIL(PYHPC_ERR_INTERNAL, "unhandled combiner %d", c.combiner);
}

}  // namespace

pyhpc_status canonicalize(MPI_Datatype type, Canonical* out) {
  *out = Canonical{};
  if (type == MPI_DATATYPE_NULL)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "datatype is MPI_DATATYPE_NULL");
  MPI_Aint lb = 0, extent = 0;
  int size = 0;
  PYHPC_MPI_CHECK(PMPI_Type_get_extent(type, &lb, &extent));
  PYHPC_MPI_CHECK(PMPI_Type_size(type, &size));
  out->lb = lb;
  out->extent = extent;
  out->size = size;
  Described d;
  PYHPC_CHECK(describe(type, 0, &d));
  if (!d.ok) {
    out->why_not = d.why;
    return PYHPC_OK;
  }
  simplify(&d.layout);
  if (d.layout.size() != size) {  // the walk and MPI must agree on how many bytes there are
    return PYHPC_FAIL(PYHPC_ERR_INTERNAL, "canonical form %s holds %lld bytes but MPI_Type_size is %d",
                      d.layout.describe().c_str(), static_cast<long long>(d.layout.size()), size);
  }
  out->supported = true;
  out->layout = d.layout;
  return PYHPC_OK;
}

}  // namespace pyhpc::datatype
