// The card's read floor: a plain streaming read of a buffer, as fast as this card reads HBM (floors.py).
//
// XLA FFI handler "MorphogenProbeStreamXor": input words (any shape) u32, its element count a multiple of 4
// (16-byte loads); output out (1,) u32, the XOR of every word (so no load can be optimized away). Each thread
// keeps kUnroll independent 16-byte loads in flight per grid-stride step (streaming loads: the data is never
// reused), folds them into one word, a warp shuffle folds the warp's, and one atomicXor per warp lands in out
// (zeroed first). The grid fills the card: as many 256-thread blocks as can be resident on every SM at once.
#include <cstdint>
#include <string>
#include <cuda_runtime.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;  // 16-byte loads in flight per thread and step

__global__ void __launch_bounds__(kThreads) stream_xor(const uint4* __restrict__ in, size_t n, uint32_t* out) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  uint4 acc = make_uint4(0u, 0u, 0u, 0u);
  for (; i + (kUnroll - 1) * stride < n; i += kUnroll * stride) {
    uint4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v[u] = __ldcs(in + i + u * stride);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      acc.x ^= v[u].x;
      acc.y ^= v[u].y;
      acc.z ^= v[u].z;
      acc.w ^= v[u].w;
    }
  }
  for (; i < n; i += stride) {  // the last partial step
    const uint4 v = __ldcs(in + i);
    acc.x ^= v.x;
    acc.y ^= v.y;
    acc.z ^= v.z;
    acc.w ^= v.w;
  }
  uint32_t r = acc.x ^ acc.y ^ acc.z ^ acc.w;
#pragma unroll
  for (int s = 16; s > 0; s >>= 1) r ^= __shfl_xor_sync(0xffffffffu, r, s);
  if ((threadIdx.x & 31) == 0) atomicXor(out, r);
}

ffi::Error ProbeStreamXorImpl(cudaStream_t stream, ffi::Buffer<ffi::U32> words, ffi::ResultBuffer<ffi::U32> out) {
  const size_t count = words.element_count();
  if (count % 4 != 0) return ffi::Error::InvalidArgument("probe: words must hold a multiple of 4 u32 (16-byte loads)");
  if (out->element_count() != 1) return ffi::Error::InvalidArgument("probe: out must be (1,) u32");
  int dev = 0, sms = 0, per_sm = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, stream_xor, kThreads, 0);
  const size_t n = count / 4;
  const size_t fill = static_cast<size_t>(max(1, sms)) * max(1, per_sm);
  const size_t needed = (n + kThreads - 1) / kThreads;  // a small buffer: no block without work
  const unsigned blocks = static_cast<unsigned>(needed < fill ? (needed > 0 ? needed : 1) : fill);
  cudaMemsetAsync(out->typed_data(), 0, sizeof(uint32_t), stream);
  stream_xor<<<blocks, kThreads, 0, stream>>>(reinterpret_cast<const uint4*>(words.typed_data()), n,
                                              out->typed_data());
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return ffi::Error::Internal(std::string("probe launch: ") + cudaGetErrorString(err));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MorphogenProbeStreamXor, ProbeStreamXorImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()   // words: the buffer read, any shape
                                  .Ret<ffi::Buffer<ffi::U32>>());  // out (1,): the XOR of every word
