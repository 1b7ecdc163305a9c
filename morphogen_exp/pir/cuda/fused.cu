// The fused scan step of engine "fused": the last GGM levels of a tile expanded in shared memory and the
// masked XOR of the raw pages in the same kernel, so the masks never reach HBM and the ChaCha8 work of
// one resident block overlaps the page reads of the others (the scan is read-bound at small K).
//
// XLA FFI handler "MorphogenExpandXorFused": inputs pages (P, 1024) u32 (raw rows, read in place), row ()
// s32 (the row of leaf `lo`), roots (K, S, 4) u32 and root_t (K, S) u32 (subtree roots, `levels` above the
// leaves), scw (K, levels, 4), tcw (K, levels, 2), fcw (K, 4) u32; attributes lo, count (leaves
// [lo, lo + count) of the S * 2^levels are used, leaf lo + i masking row row + i) and kb (keys per
// block: 1..4); output partial (G, K, 1024) u32: block group g's XOR of its pages, XOR-reduced over G after.
#include <cstdint>
#include <string>
#include <cuda_runtime.h>

#include "dpf.cuh"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kThreads = 256;  // thread i holds page words 4i .. 4i + 3 (one uint4) of every page
constexpr int kUnroll = 8;     // page loads in flight per thread

// Grid (G * key blocks): block b is key block b % nkb of group g = b / nkb, and takes subtrees g, g + G, ...
// of [0, S); for each, the KB keys' subtrees are expanded into masks, then the subtree's pages inside
// [lo, lo + count) are streamed once for its KB keys. The key blocks of a group are launched side by side
// and walk the same subtrees, so with more than 4 keys the pages come from HBM once and from L2 after.
template <int KB>
__global__ void __launch_bounds__(kThreads, 3) expand_xor_fused(
    const uint4* __restrict__ pages, const int* __restrict__ row, const uint4* __restrict__ roots,
    const uint32_t* __restrict__ root_t, const uint4* __restrict__ scw, const uint2* __restrict__ tcw,
    const uint4* __restrict__ fcw, int K, int S, int levels, long long lo, long long count,
    uint4* __restrict__ partial) {
  __shared__ dpf::Subtrees<KB> st;
  const int nkb = (K + KB - 1) / KB, group = blockIdx.x / nkb, groups = gridDim.x / nkb;
  const int key0 = (blockIdx.x % nkb) * KB, nk = min(KB, K - key0);
  const long long row0 = *row;
  uint4 acc[KB];
#pragma unroll
  for (int k = 0; k < KB; ++k) acc[k] = make_uint4(0, 0, 0, 0);

  for (int s = group; s < S; s += groups) {
    const long long first = (long long)s << levels;
    const long long p0 = max(first, lo), p1 = min(first + (1ll << levels), lo + count);
    if (p0 >= p1) continue;  // uniform over the block
    __syncthreads();         // the last subtree's masks are no longer read
    if (threadIdx.x < nk) {
      const size_t r = (size_t)(key0 + threadIdx.x) * S + s;
      st.seed[threadIdx.x][1] = roots[r];
      st.t[threadIdx.x][1] = root_t[r] & 1u;
    }
    dpf::expand_subtrees<KB>(st, levels, key0, nk, scw, tcw, fcw);

    const uint4* src = pages + (size_t)(row0 + (p0 - lo)) * kThreads + threadIdx.x;
    const int leaf0 = (1 << levels) + (int)(p0 - first), n = (int)(p1 - p0);
    int i = 0;
    for (; i + kUnroll <= n; i += kUnroll) {
      uint4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) v[u] = __ldcs(src + (size_t)(i + u) * kThreads);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
#pragma unroll
        for (int k = 0; k < KB; ++k) {
          const uint4 m = st.seed[k][leaf0 + i + u];  // keys >= nk: stale masks, never written out
          acc[k].x ^= v[u].x & m.x; acc[k].y ^= v[u].y & m.y; acc[k].z ^= v[u].z & m.z; acc[k].w ^= v[u].w & m.w;
        }
    }
    for (; i < n; ++i) {
      const uint4 v = __ldcs(src + (size_t)i * kThreads);
#pragma unroll
      for (int k = 0; k < KB; ++k) {
        const uint4 m = st.seed[k][leaf0 + i];
        acc[k].x ^= v.x & m.x; acc[k].y ^= v.y & m.y; acc[k].z ^= v.z & m.z; acc[k].w ^= v.w & m.w;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < KB; ++k)
    if (k < nk) partial[((size_t)group * K + key0 + k) * kThreads + threadIdx.x] = acc[k];
}

template <int KB>
void launch(dim3 grid, cudaStream_t stream, const uint4* pages, const int* row, const uint4* roots,
            const uint32_t* root_t, const uint4* scw, const uint2* tcw, const uint4* fcw, int K, int S, int levels,
            long long lo, long long count, uint4* partial) {
  expand_xor_fused<KB><<<grid, kThreads, 0, stream>>>(pages, row, roots, root_t, scw, tcw, fcw, K, S, levels, lo,
                                                      count, partial);
}

ffi::Error ExpandXorFusedImpl(cudaStream_t stream, ffi::Buffer<ffi::U32> pages, ffi::Buffer<ffi::S32> row,
                              ffi::Buffer<ffi::U32> roots, ffi::Buffer<ffi::U32> root_t, ffi::Buffer<ffi::U32> scw,
                              ffi::Buffer<ffi::U32> tcw, ffi::Buffer<ffi::U32> fcw,
                              ffi::ResultBuffer<ffi::U32> partial, int64_t lo, int64_t count, int32_t kb) {
  const auto pd = pages.dimensions(), rd = roots.dimensions(), cd = scw.dimensions(), od = partial->dimensions();
  if (pd.size() != 2 || pd[1] != 1024) return ffi::Error::InvalidArgument("fused: pages must be (P, 1024) u32");
  if (rd.size() != 3 || rd[2] != 4) return ffi::Error::InvalidArgument("fused: roots must be (K, S, 4) u32");
  const int K = static_cast<int>(rd[0]), S = static_cast<int>(rd[1]);
  if (cd.size() != 3 || cd[0] != K || cd[2] != 4 || cd[1] > dpf::kMaxLevels)
    return ffi::Error::InvalidArgument("fused: scw must be (K, levels <= 8, 4) u32");
  const int levels = static_cast<int>(cd[1]);
  if (od.size() != 3 || od[1] != K || od[2] != 1024) return ffi::Error::InvalidArgument("fused: partial must be (G, K, 1024)");
  if (kb < 1 || kb > 4) return ffi::Error::InvalidArgument("fused: kb must be 1, 2, 3 or 4");
  if (lo < 0 || count < 1 || lo + count > ((int64_t)S << levels))
    return ffi::Error::InvalidArgument("fused: leaves [lo, lo + count) must lie in the S subtrees");
  const dim3 grid(static_cast<unsigned>(od[0] * ((K + kb - 1) / kb)));
  const auto* p4 = reinterpret_cast<const uint4*>(pages.typed_data());
  const auto* r4 = reinterpret_cast<const uint4*>(roots.typed_data());
  const auto* c4 = reinterpret_cast<const uint4*>(scw.typed_data());
  const auto* t2 = reinterpret_cast<const uint2*>(tcw.typed_data());
  const auto* f4 = reinterpret_cast<const uint4*>(fcw.typed_data());
  auto* o4 = reinterpret_cast<uint4*>(partial->typed_data());
  const int* rw = row.typed_data();
  const uint32_t* rt = root_t.typed_data();
  switch (kb) {
    case 1: launch<1>(grid, stream, p4, rw, r4, rt, c4, t2, f4, K, S, levels, lo, count, o4); break;
    case 2: launch<2>(grid, stream, p4, rw, r4, rt, c4, t2, f4, K, S, levels, lo, count, o4); break;
    case 3: launch<3>(grid, stream, p4, rw, r4, rt, c4, t2, f4, K, S, levels, lo, count, o4); break;
    default: launch<4>(grid, stream, p4, rw, r4, rt, c4, t2, f4, K, S, levels, lo, count, o4); break;
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return ffi::Error::Internal(std::string("fused launch: ") + cudaGetErrorString(err));
  return ffi::Error::Success();
}

}  // namespace

// The binding, shared by the handler and its command-buffer-compatible twin below.
#define MORPHOGEN_EXPAND_XOR_FUSED_BINDING                                         \
  ffi::Ffi::Bind()                                                                \
      .Ctx<ffi::PlatformStream<cudaStream_t>>()                                   \
      .Arg<ffi::Buffer<ffi::U32>>() /* pages: (P, 1024) raw pages */              \
      .Arg<ffi::Buffer<ffi::S32>>() /* row: the window's first DB page, scalar */ \
      DPF_FFI_SUBTREE_ARGS                                                         \
      .Ret<ffi::Buffer<ffi::U32>>() /* partial: (G, K, 1024) per block group */   \
      .Attr<int64_t>("lo")                                                        \
      .Attr<int64_t>("count")                                                     \
      .Attr<int32_t>("kb")

// The default target: XLA never captures it into a command buffer (CUDA graph).
XLA_FFI_DEFINE_HANDLER_SYMBOL(MorphogenExpandXorFused, ExpandXorFusedImpl, MORPHOGEN_EXPAND_XOR_FUSED_BINDING);

// The same handler declared command-buffer compatible (target *_graph; cuda/capture.py picks it only while
// graph_replay lowers an executable that asks XLA to capture custom calls). Capture-safe: the body only launches
// one kernel on `stream` into the buffer XLA passes in (cudaGetLastError is not a stream operation); no
// allocation, copy, synchronisation or stream query; its grid comes from shapes and attributes, fixed for the
// executable.
XLA_FFI_DEFINE_HANDLER_SYMBOL(MorphogenExpandXorFusedGraph, ExpandXorFusedImpl, MORPHOGEN_EXPAND_XOR_FUSED_BINDING,
                              {ffi::Traits::kCmdBufferCompatible});
