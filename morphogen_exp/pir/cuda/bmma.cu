// Masked XOR of a page tile on a bit-sliced database with binary tensor-core MMA (sm_80+, built for sm_90a).
//
// XLA FFI handler "MorphogenBmmaMaskedXor": inputs words (P_pad, 1024) u32 in the layout of
// morphogen_exp/pir/bitsliced.py, offset () s32 (the tile's first page), masks (K, T, 4) u32;
// outputs out (K, 1024) u32 and scratch (nch * 128 * KTp * 64) u32 (the masks as per-bit page
// vectors in B-fragment order); attributes kg (key tiles of 8 per warp: 1 to 4) and stages (bit 0: the
// mask transpose, bit 1: the MMA scan; 3 = both, the others only time one kernel alone).
//
// out bit (k, b = r*128 + j) = parity over pages i of mask_k(i) bit j AND page_i bit b: for every j a
// GF(2) product (256 r x pages) @ (pages x K), as mma.m16n8k256 .and.popc (A = database rows r, 256 pages
// per k-step; B = key columns; the s32 count's low bit is the answer bit).
#include <cstdint>
#include <string>
#include <cuda_runtime.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kChunk = 256;   // pages per chunk = k-depth of one MMA
constexpr int kJ = 128;       // mask bits
constexpr int kRt = 16;       // r-tiles of 16 rows (256 repeats)
constexpr int kRtPerWarp = 4; // r-tiles per warp: 4 warps cover one j

__device__ __forceinline__ uint32_t transpose_stage(uint32_t x, int lane, int s, uint32_t m) {
  const uint32_t y = __shfl_xor_sync(0xffffffffu, x, s);
  return (lane & s) ? ((x & ~m) | ((y & ~m) >> s)) : ((x & m) | ((y & m) << s));
}

// Lane l holds row l (32 bits); afterwards lane s holds column s: bit i = bit s of row i.
__device__ __forceinline__ uint32_t transpose32(uint32_t x, int lane) {
  x = transpose_stage(x, lane, 16, 0x0000FFFFu);
  x = transpose_stage(x, lane, 8, 0x00FF00FFu);
  x = transpose_stage(x, lane, 4, 0x0F0F0F0Fu);
  x = transpose_stage(x, lane, 2, 0x33333333u);
  x = transpose_stage(x, lane, 1, 0x55555555u);
  return x;
}

__device__ __forceinline__ int first_chunk(int off, int db_chunks, int nch) {
  int c0 = off / kChunk;
  return min(max(c0, 0), db_chunks - nch);
}

// Masks (K, T, 4) -> per-bit page vectors mt[ci][j][kt][lane = g*4 + tig][reg] for the nch chunks read.
// Block (ci, kt): 8 warps, warp g = key kt*8 + g; pages outside [off, off + T) and keys >= K get 0.
__global__ void __launch_bounds__(256) masks_to_bitvectors(const uint4* __restrict__ masks,
                                                           const int* __restrict__ offset, int K, int T,
                                                           int db_chunks, int nch, int ktp,
                                                           uint32_t* __restrict__ mt) {
  __shared__ uint32_t s[kJ * 65];  // [j][64 words], rows padded to 65 against bank conflicts
  const int ci = blockIdx.x, kt = blockIdx.y, lane = threadIdx.x & 31, g = threadIdx.x >> 5;
  const int off = *offset;
  const int base = (first_chunk(off, db_chunks, nch) + ci) * kChunk;
  const int k = kt * 8 + g;
#pragma unroll
  for (int q = 0; q < 8; ++q) {
    const int idx = base + q * 32 + lane - off;
    uint4 m = make_uint4(0, 0, 0, 0);
    if (k < K && idx >= 0 && idx < T) m = masks[(size_t)k * T + idx];
    const uint32_t w[4] = {m.x, m.y, m.z, m.w};
#pragma unroll
    for (int wi = 0; wi < 4; ++wi) {
      const uint32_t v = transpose32(w[wi], lane);  // pages 32q..32q+31 of mask bit j = 32*wi + lane
      s[(wi * 32 + lane) * 65 + g * 8 + (q & 3) * 2 + (q >> 2)] = v;
    }
  }
  __syncthreads();
  uint32_t* dst = mt + ((size_t)ci * kJ * ktp + kt) * 64;
  for (int e = threadIdx.x; e < kJ * 64; e += blockDim.x) {
    const int j = e >> 6, x = e & 63;
    dst[(size_t)j * ktp * 64 + x] = s[j * 65 + x];
  }
}

__device__ __forceinline__ void bmma(int (&c)[4], const uint4& a, const uint2& b) {
  asm volatile(
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b.x), "r"(b.y));
}

// Grid (KTp / KG key groups, 64 j-pairs, splits of the chunk range); 8 warps: warp w owns
// j = 2 * blockIdx.y + w / 4 and r-tiles 4 * (w % 4) + [0, 4), for KG key tiles; it accumulates
// s32 counts over its chunks, then XORs the parity bits into out with atomics.
template <int KG>
__global__ void __launch_bounds__(256, 2) bmma_scan(const uint4* __restrict__ words,
                                                    const uint2* __restrict__ mt,
                                                    const int* __restrict__ offset, int K, int T,
                                                    int db_chunks, int nch, int ktp, int per_split,
                                                    uint32_t* __restrict__ out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int j = blockIdx.y * 2 + (warp >> 2), rt0 = (warp & 3) * kRtPerWarp, kt0 = blockIdx.x * KG;
  const int off = *offset;
  const int start = first_chunk(off, db_chunks, nch);
  // Chunks [lo, hi) of this split that hold tile pages.
  const int lo = max(blockIdx.z * per_split, off / kChunk - start);
  const int hi = min(min((blockIdx.z + 1) * per_split, nch), (off + T - 1) / kChunk - start + 1);

  int acc[kRtPerWarp][KG][4];
#pragma unroll
  for (int a = 0; a < kRtPerWarp; ++a)
#pragma unroll
    for (int b = 0; b < KG; ++b)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[a][b][r] = 0;

#pragma unroll 2
  for (int ci = lo; ci < hi; ++ci) {
    const uint4* arow = words + (((size_t)(start + ci) * kJ + j) * kRt + rt0) * 32 + lane;
    const uint2* brow = mt + (((size_t)ci * kJ + j) * ktp + kt0) * 32 + lane;
    uint4 a[kRtPerWarp];
    uint2 b[KG];
#pragma unroll
    for (int i = 0; i < kRtPerWarp; ++i) a[i] = __ldg(arow + i * 32);
#pragma unroll
    for (int i = 0; i < KG; ++i) b[i] = __ldg(brow + i * 32);
#pragma unroll
    for (int i = 0; i < kRtPerWarp; ++i)
#pragma unroll
      for (int t = 0; t < KG; ++t) bmma(acc[i][t], a[i], b[t]);
  }

  const int g = lane >> 2, tig = lane & 3;
  const uint32_t bit = 1u << (j & 31);
#pragma unroll
  for (int i = 0; i < kRtPerWarp; ++i)
#pragma unroll
    for (int t = 0; t < KG; ++t)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int row = (rt0 + i) * 16 + g + ((r >> 1) << 3);
        const int key = (kt0 + t) * 8 + tig * 2 + (r & 1);
        if ((acc[i][t][r] & 1) && key < K) atomicXor(out + (size_t)key * 1024 + row * 4 + (j >> 5), bit);
      }
}

int chunk_span(int T, int db_chunks) { return min(db_chunks, (T + kChunk - 1) / kChunk + 1); }

ffi::Error BmmaMaskedXorImpl(cudaStream_t stream, ffi::Buffer<ffi::U32> words, ffi::Buffer<ffi::S32> offset,
                             ffi::Buffer<ffi::U32> masks, ffi::ResultBuffer<ffi::U32> out,
                             ffi::ResultBuffer<ffi::U32> scratch, int32_t kg, int32_t stages) {
  const auto wd = words.dimensions();
  const auto md = masks.dimensions();
  if (wd.size() != 2 || wd[1] != 1024 || wd[0] % kChunk != 0)
    return ffi::Error::InvalidArgument("bmma: words must be (256*C, 1024) u32");
  if (md.size() != 3 || md[2] != 4) return ffi::Error::InvalidArgument("bmma: masks must be (K, T, 4) u32");
  if (kg < 1 || kg > 4) return ffi::Error::InvalidArgument("bmma: kg must be 1, 2, 3 or 4");
  const int K = static_cast<int>(md[0]), T = static_cast<int>(md[1]);
  const int db_chunks = static_cast<int>(wd[0] / kChunk);
  const int nch = chunk_span(T, db_chunks);
  const int kt = (K + 7) / 8, ktp = (kt + kg - 1) / kg * kg;
  if (scratch->element_count() < (size_t)nch * kJ * ktp * 64)
    return ffi::Error::InvalidArgument("bmma: scratch too small for (nch, 128, KTp, 64)");
  const int* off = offset.typed_data();

  cudaMemsetAsync(out->typed_data(), 0, (size_t)K * 1024 * sizeof(uint32_t), stream);
  if (stages & 1)
    masks_to_bitvectors<<<dim3(nch, ktp), 256, 0, stream>>>(reinterpret_cast<const uint4*>(masks.typed_data()),
                                                          off, K, T, db_chunks, nch, ktp,
                                                          scratch->typed_data());
  const int groups = ktp / kg;
  const int target_blocks = 8 * 132;
  int splits = (target_blocks + groups * 64 - 1) / (groups * 64);
  splits = max(1, min(splits, nch));
  const int per_split = (nch + splits - 1) / splits;
  splits = (nch + per_split - 1) / per_split;
  const dim3 grid(groups, kJ / 2, splits);
  const auto* w4 = reinterpret_cast<const uint4*>(words.typed_data());
  const auto* m2 = reinterpret_cast<const uint2*>(scratch->typed_data());
  uint32_t* o = out->typed_data();
  if (!(stages & 2)) {
  } else if (kg == 1) bmma_scan<1><<<grid, 256, 0, stream>>>(w4, m2, off, K, T, db_chunks, nch, ktp, per_split, o);
  else if (kg == 2) bmma_scan<2><<<grid, 256, 0, stream>>>(w4, m2, off, K, T, db_chunks, nch, ktp, per_split, o);
  else if (kg == 3) bmma_scan<3><<<grid, 256, 0, stream>>>(w4, m2, off, K, T, db_chunks, nch, ktp, per_split, o);
  else bmma_scan<4><<<grid, 256, 0, stream>>>(w4, m2, off, K, T, db_chunks, nch, ktp, per_split, o);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return ffi::Error::Internal(std::string("bmma launch: ") + cudaGetErrorString(err));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MorphogenBmmaMaskedXor, BmmaMaskedXorImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>()
                                  .Attr<int32_t>("kg")
                                  .Attr<int32_t>("stages"));
