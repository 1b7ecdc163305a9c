// The GGM tree of the DPF keys on the GPU: ChaCha8, one node into its two children, and a block-wide
// expansion of small subtrees in shared memory. Bit for bit the numpy original (pir/prg.py,
// pir/reference.py) and the XLA engine (pir/xla_ops.py): a node (seed, t) gives ChaCha8 blocks 0 and 1
// of key seed||seed (zero nonce); left/right child seeds are block0 words 0..3 / 4..7 and the t bits
// bit 0 of block1 words 0 / 1, each XORed with the level's correction words where the parent's t is 1;
// a leaf's output (the page mask) is its seed XOR final_cw where its t is 1.
#pragma once
#include <cstdint>

// The five FFI operands of the subtrees a kernel expands, in the order of pir/engine.py's Subtrees (what
// cuda/bmma.py and cuda/fused.py pass): spliced into a handler's XLA FFI binding (bmma.cu, fused.cu).
#define DPF_FFI_SUBTREE_ARGS                                                    \
  .Arg<ffi::Buffer<ffi::U32>>() /* roots: (K, S, 4) subtree seeds */            \
  .Arg<ffi::Buffer<ffi::U32>>() /* root_t: (K, S) control bits */               \
  .Arg<ffi::Buffer<ffi::U32>>() /* scw: (K, levels, 4) seed correction */       \
  .Arg<ffi::Buffer<ffi::U32>>() /* tcw: (K, levels, 2) control correction */    \
  .Arg<ffi::Buffer<ffi::U32>>() /* fcw: (K, 4) final correction words */

namespace dpf {

// MORPHOGEN_CHACHA_FMA (compile time, default 0): a bit mask of the quarter round's rotations (1: by 16,
// 2: by 12, 4: by 8, 8: by 7) computed on the FMA pipe rather than the ALU pipe, where an ALU-bound
// expansion has spare FMA issue (docs/bitsliced.md, "ChaCha8 on two pipes"; build with
// MORPHOGEN_CUDA_DEFINES=MORPHOGEN_CHACHA_FMA=2). 0 compiles exactly the all-ALU rotations.
#ifndef MORPHOGEN_CHACHA_FMA
#define MORPHOGEN_CHACHA_FMA 0
#endif
// MORPHOGEN_DPF_HOST: ChaCha8 compiled as host code too (tests/support/chacha_host_check.cu, which checks
// every mask against the numpy original); the device build is the same code either way.
#ifdef MORPHOGEN_DPF_HOST
#define DPF_HD __host__ __device__
#else
#define DPF_HD __device__
#endif

DPF_HD __forceinline__ uint32_t rotl(uint32_t x, int r) {
#if defined(MORPHOGEN_DPF_HOST) && !defined(__CUDA_ARCH__)
  return (x << r) | (x >> (32 - r));
#else
  return __funnelshift_l(x, x, r);
#endif
}

// rotl(x, R) on the FMA pipe: x * 2^R = hi:lo (64 bits) with lo = x << R and hi = x >> (32 - R), which do not
// overlap, so lo + hi is the rotation: IMAD.HI.U32 then IMAD. Inline PTX with the immediate 2^R: in C++
// ptxas turns the multiply back into a funnel shift (SHF, ALU pipe).
template <int R>
DPF_HD __forceinline__ uint32_t rotl_fma(uint32_t x) {
  constexpr uint32_t kMul = 1u << R;
#ifdef __CUDA_ARCH__
  uint32_t hi, out;
  asm("mul.hi.u32 %0, %1, %2;" : "=r"(hi) : "r"(x), "n"(kMul));
  asm("mad.lo.u32 %0, %1, %2, %3;" : "=r"(out) : "r"(x), "n"(kMul), "r"(hi));
  return out;
#else
  return x * kMul + static_cast<uint32_t>((static_cast<uint64_t>(x) * kMul) >> 32);  // the two PTX ops' meaning
#endif
}

// The rotation by R of the quarter round, on the pipe that bit `bit` of mask M selects.
template <int R, int M, int bit>
DPF_HD __forceinline__ uint32_t rot(uint32_t x) {
  if constexpr ((M & bit) != 0) {
    return rotl_fma<R>(x);
  } else {
    return rotl(x, R);
  }
}

#define DPF_QR(a, b, c, d)                                    \
  a += b; d ^= a; d = ::dpf::rot<16, M, 1>(d);                \
  c += d; b ^= c; b = ::dpf::rot<12, M, 2>(b);                \
  a += b; d ^= a; d = ::dpf::rot<8, M, 4>(d);                 \
  c += d; b ^= c; b = ::dpf::rot<7, M, 8>(b);

constexpr uint32_t kSigma0 = 0x61707865u, kSigma1 = 0x3320646Eu, kSigma2 = 0x79622D32u, kSigma3 = 0x6B206574u;

// The first NW words of ChaCha8 block `ctr` of key seed||seed, zero nonce; M: the rotations on the FMA pipe.
template <int NW, int M = MORPHOGEN_CHACHA_FMA>
DPF_HD __forceinline__ void chacha8(const uint4& s, uint32_t ctr, uint32_t (&out)[NW]) {
  uint32_t x0 = kSigma0, x1 = kSigma1, x2 = kSigma2, x3 = kSigma3;
  uint32_t x4 = s.x, x5 = s.y, x6 = s.z, x7 = s.w, x8 = s.x, x9 = s.y, x10 = s.z, x11 = s.w;
  uint32_t x12 = ctr, x13 = 0, x14 = 0, x15 = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // 4 double rounds = 8 rounds
    DPF_QR(x0, x4, x8, x12) DPF_QR(x1, x5, x9, x13) DPF_QR(x2, x6, x10, x14) DPF_QR(x3, x7, x11, x15)
    DPF_QR(x0, x5, x10, x15) DPF_QR(x1, x6, x11, x12) DPF_QR(x2, x7, x8, x13) DPF_QR(x3, x4, x9, x14)
  }
  const uint32_t y[8] = {x0 + kSigma0, x1 + kSigma1, x2 + kSigma2, x3 + kSigma3, x4 + s.x, x5 + s.y, x6 + s.z, x7 + s.w};
#pragma unroll
  for (int i = 0; i < NW; ++i) out[i] = y[i];
}

#undef DPF_QR
#undef DPF_HD

__device__ __forceinline__ uint4 xor_and(const uint4& a, const uint4& b, uint32_t on) {
  return make_uint4(a.x ^ (b.x & on), a.y ^ (b.y & on), a.z ^ (b.z & on), a.w ^ (b.w & on));
}

// One GGM level: node (seed, t in {0, 1}) with this level's corrections -> both children.
__device__ __forceinline__ void expand_node(const uint4& seed, uint32_t t, const uint4& cw, const uint2& tcw,
                                            uint4& left, uint32_t& tl, uint4& right, uint32_t& tr) {
  uint32_t b0[8], b1[2];
  chacha8<8>(seed, 0u, b0);
  chacha8<2>(seed, 1u, b1);
  const uint32_t on = 0u - (t & 1u);
  left = xor_and(make_uint4(b0[0], b0[1], b0[2], b0[3]), cw, on);
  right = xor_and(make_uint4(b0[4], b0[5], b0[6], b0[7]), cw, on);
  tl = (b1[0] & 1u) ^ (tcw.x & on & 1u);
  tr = (b1[1] & 1u) ^ (tcw.y & on & 1u);
}

// Shared-memory heap of KB subtrees of at most 2^kMaxLevels leaves: node h of key k has children 2h
// and 2h + 1; the root is h = 1, the leaves of an L-level subtree h = 2^L .. 2^(L+1) - 1.
constexpr int kMaxLevels = 8;
constexpr int kHeap = 2 << kMaxLevels;

template <int KB>
struct Subtrees {
  uint4 seed[KB][kHeap];
  uint32_t t[KB][kHeap];
};

// Block-wide: the subtree roots (already in seed[k][1], t[k][1]) expanded `levels` levels down, then the
// leaves turned into page masks (final correction). Keys k >= nk are left alone. Ends synchronized.
// scw (K, levels) u4, tcw (K, levels) u2 and fcw (K,) u4 are the corrections of global keys key0 + k.
template <int KB>
__device__ __forceinline__ void expand_subtrees(Subtrees<KB>& st, int levels, int key0, int nk,
                                                const uint4* __restrict__ scw, const uint2* __restrict__ tcw,
                                                const uint4* __restrict__ fcw) {
  __syncthreads();
  for (int l = 0; l < levels; ++l) {
    const int width = 1 << l, items = nk << l;
    for (int i = threadIdx.x; i < items; i += blockDim.x) {
      const int k = i >> l, h = width + (i & (width - 1));
      const int key = key0 + k;
      uint4 left, right;
      uint32_t tl, tr;
      expand_node(st.seed[k][h], st.t[k][h], __ldg(scw + (size_t)key * levels + l), __ldg(tcw + (size_t)key * levels + l),
                  left, tl, right, tr);
      st.seed[k][2 * h] = left;
      st.seed[k][2 * h + 1] = right;
      st.t[k][2 * h] = tl;
      st.t[k][2 * h + 1] = tr;
    }
    __syncthreads();
  }
  const int width = 1 << levels, items = nk << levels;
  for (int i = threadIdx.x; i < items; i += blockDim.x) {
    const int k = i >> levels, h = width + (i & (width - 1));
    st.seed[k][h] = xor_and(st.seed[k][h], __ldg(fcw + key0 + k), 0u - st.t[k][h]);
  }
  __syncthreads();
}

}  // namespace dpf
