// Read-rate variants for the floors' read probe (issue 31 item 5): which plain streaming read reaches the rate
// the engines' own scans reach on this card? Standalone: nvcc -O3 -gencode=arch=compute_90a,code=sm_90a
// scripts/read_probe_bench.cu -o /tmp/rpb && /tmp/rpb [GiB]. Each variant XOR-folds the whole buffer (random words
// from a hash, not zeros) into one word, checked equal across variants; median of 10 event-timed launches after 2
// warmups; GB/s = buffer bytes (read once) / time. One line per variant, then the best.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <vector>
#include <cuda_runtime.h>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
  std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); std::exit(1); } } while (0)

__global__ void fill(uint4* p, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 0x9E3779B1u ^ (uint32_t)(i >> 32);
    h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
    p[i] = make_uint4(h, h * 3u + 1u, h ^ 0xA5A5A5A5u, h + 7u);
  }
}

__device__ __forceinline__ uint4 ld_cs(const uint4* p) { return __ldcs(p); }
__device__ __forceinline__ uint4 ld_l2_256(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ void fold(uint4& a, const uint4& v) { a.x ^= v.x; a.y ^= v.y; a.z ^= v.z; a.w ^= v.w; }
__device__ __forceinline__ void finish(uint4 a, uint32_t* out) {
  uint32_t r = a.x ^ a.y ^ a.z ^ a.w;
  for (int s = 16; s > 0; s >>= 1) r ^= __shfl_xor_sync(0xffffffffu, r, s);
  if ((threadIdx.x & 31) == 0) atomicXor(out, r);
}

// Grid-stride, U loads in flight per thread, the loads `stride` apart (today's probe.cu with U = 4, LD = ld_cs).
template <int U, int HINT>
__global__ void __launch_bounds__(256) grid_stride(const uint4* __restrict__ in, size_t n, uint32_t* out) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  uint4 acc = make_uint4(0, 0, 0, 0);
  for (; i + (U - 1) * stride < n; i += U * stride) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = HINT ? ld_l2_256(in + i + u * stride) : ld_cs(in + i + u * stride);
#pragma unroll
    for (int u = 0; u < U; ++u) fold(acc, v[u]);
  }
  for (; i < n; i += stride) fold(acc, ld_cs(in + i));
  finish(acc, out);
}

// Each block a contiguous slab, walked in steps of U * 256 vectors (each warp's U loads in one 2 KiB..8 KiB run).
template <int U, int HINT>
__global__ void __launch_bounds__(256) slab(const uint4* __restrict__ in, size_t n, uint32_t* out) {
  const size_t per = (n + gridDim.x - 1) / gridDim.x;
  const size_t b0 = blockIdx.x * per, b1 = b0 + per < n ? b0 + per : n;
  uint4 acc = make_uint4(0, 0, 0, 0);
  size_t i = b0 + threadIdx.x;
  for (; i + (U - 1) * 256 < b1; i += U * 256) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = HINT ? ld_l2_256(in + i + u * 256) : ld_cs(in + i + u * 256);
#pragma unroll
    for (int u = 0; u < U; ++u) fold(acc, v[u]);
  }
  for (; i < b1; i += 256) fold(acc, ld_cs(in + i));
  finish(acc, out);
}

using Kern = void (*)(const uint4*, size_t, uint32_t*);

int main(int argc, char** argv) {
  const double gib = argc > 1 ? std::atof(argv[1]) : 16.0;
  const size_t bytes = (size_t)(gib * (1ull << 30)) / 4096 * 4096, n = bytes / 16;
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  uint4* buf;
  uint32_t* out;
  CK(cudaMalloc(&buf, bytes));
  CK(cudaMalloc(&out, 4));
  fill<<<sms * 8, 256>>>(buf, n);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  struct V { const char* name; Kern k; int blocks_per_sm; };
  const V vs[] = {
      {"grid_stride_u4_ldcs (probe.cu today)", grid_stride<4, 0>, 8},
      {"grid_stride_u8_ldcs", grid_stride<8, 0>, 8},
      {"grid_stride_u4_l2_256", grid_stride<4, 1>, 8},
      {"grid_stride_u8_l2_256", grid_stride<8, 1>, 8},
      {"slab_u4_ldcs", slab<4, 0>, 8},
      {"slab_u8_ldcs", slab<8, 0>, 8},
      {"slab_u8_l2_256", slab<8, 1>, 8},
      {"slab_u16_l2_256", slab<16, 1>, 4},
      {"slab_u8_l2_256_x4blocks", slab<8, 1>, 4},
  };
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  uint32_t ref = 0;
  double best = 0;
  const char* best_name = "";
  for (const V& v : vs) {
    std::vector<float> ms;
    uint32_t got = 0;
    for (int r = 0; r < 12; ++r) {
      CK(cudaMemset(out, 0, 4));
      CK(cudaEventRecord(e0));
      v.k<<<sms * v.blocks_per_sm, 256>>>(buf, n, out);
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      CK(cudaGetLastError());
      float t;
      CK(cudaEventElapsedTime(&t, e0, e1));
      if (r >= 2) ms.push_back(t);
      CK(cudaMemcpy(&got, out, 4, cudaMemcpyDeviceToHost));
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2], gbps = bytes / med / 1e6;
    if (&v == vs) ref = got;
    std::printf("%-40s %8.3f ms  %7.1f GB/s  (min %.3f max %.3f)  xor %08x %s\n", v.name, med, gbps, ms.front(),
                ms.back(), got, got == ref ? "ok" : "MISMATCH");
    if (got == ref && gbps > best) { best = gbps; best_name = v.name; }
  }
  // A device-to-device copy of half the buffer onto the other half: the copy ceiling (read + write).
  std::vector<float> ms;
  for (int r = 0; r < 7; ++r) {
    CK(cudaEventRecord(e0));
    CK(cudaMemcpyAsync((char*)buf + bytes / 2, buf, bytes / 2, cudaMemcpyDeviceToDevice));
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float t;
    CK(cudaEventElapsedTime(&t, e0, e1));
    if (r >= 2) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  std::printf("%-40s %8.3f ms  %7.1f GB/s read+write\n", "cudaMemcpy D2D (half onto half)", ms[ms.size() / 2],
              bytes / ms[ms.size() / 2] / 1e6);
  std::printf("best read: %s %.1f GB/s over %.2f GiB\n", best_name, best, bytes / double(1ull << 30));
  return 0;
}
