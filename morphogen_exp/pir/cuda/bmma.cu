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
//
// XLA FFI handler "MorphogenBmmaExpandXor" (the masks never reach HBM): the same scan, but the
// per-bit page vectors are written by `expand_to_bitvectors` straight from subtree roots (the tile's last
// GGM levels expanded per warp, dpf.cuh), instead of from stored masks. Inputs words, row () s32 (the DB
// page of leaf `lo`), roots (K, S, 4) u32, root_t (K, S) u32, scw (K, L <= 8, 4), tcw (K, L, 2), fcw (K, 4)
// u32; outputs out (K, 1024) and scratch as above; attributes lo, count (leaves [lo, lo + count) of the
// S * 2^L mask DB pages [row, row + count)), kg and stages (bit 0: the expansion, bit 1: the MMA scan; 4: both
// in one pipelined kernel, K <= 8, `expand_scan_pipelined`, its scratch 2 x 8 chunks x 128 x K x 8 words a block).
#include <cstdint>
#include <string>
#include <cuda_runtime.h>

#include "dpf.cuh"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kChunk = 256;   // pages per chunk = k-depth of one MMA
constexpr int kJ = 128;       // mask bits
constexpr int kRt = 16;       // r-tiles of 16 rows (256 repeats)
constexpr int kRtPerWarp = 4; // r-tiles per warp: 4 warps cover one j

// 32x32 bit transpose across a warp: lane l holds row l (32 bits); afterwards lane s holds column s (bit i =
// bit s of row i). Five butterfly stages; in stage s lane l swaps a block of bits with lane l ^ s. Branch-free
// with per-lane constants (set once per thread): stages 16 and 8 are one byte permute each (PRMT), stages 4, 2
// and 1 one funnel shift and one LOP3: x' = (x & keep) | (rotl(y, rot) & ~keep), keep = m and rot = s in the lower
// lane of a pair, ~m and 32 - s in the upper (the rotation's wrapped bits fall outside ~keep). The selects of
// the two-sided form cost about 5 integer instructions a stage in the expansion's hot loop.
struct WarpTranspose {
  uint32_t sel16, sel8, keep4, keep2, keep1, rot4, rot2, rot1;

  __device__ __forceinline__ explicit WarpTranspose(int lane)
      : sel16(lane & 16 ? 0x3276u : 0x5410u),  // upper: (y2 y3 x2 x3), lower: (x0 x1 y0 y1)
        sel8(lane & 8 ? 0x3715u : 0x6240u),    // upper: (y1 x1 y3 x3), lower: (x0 y0 x2 y2)
        keep4(lane & 4 ? 0xF0F0F0F0u : 0x0F0F0F0Fu),
        keep2(lane & 2 ? 0xCCCCCCCCu : 0x33333333u),
        keep1(lane & 1 ? 0xAAAAAAAAu : 0x55555555u),
        rot4(lane & 4 ? 28u : 4u),
        rot2(lane & 2 ? 30u : 2u),
        rot1(lane & 1 ? 31u : 1u) {}

  static __device__ __forceinline__ uint32_t bits(uint32_t x, uint32_t s, uint32_t keep, uint32_t rot) {
    const uint32_t y = __shfl_xor_sync(0xffffffffu, x, s);
    return (x & keep) | (__funnelshift_l(y, y, rot) & ~keep);
  }

  __device__ __forceinline__ uint32_t operator()(uint32_t x) const {
    x = __byte_perm(x, __shfl_xor_sync(0xffffffffu, x, 16), sel16);
    x = __byte_perm(x, __shfl_xor_sync(0xffffffffu, x, 8), sel8);
    x = bits(x, 4, keep4, rot4);
    x = bits(x, 2, keep2, rot2);
    return bits(x, 1, keep1, rot1);
  }
};

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
  const WarpTranspose transpose32(lane);
#pragma unroll
  for (int q = 0; q < 8; ++q) {
    const int idx = base + q * 32 + lane - off;
    uint4 m = make_uint4(0, 0, 0, 0);
    if (k < K && idx >= 0 && idx < T) m = masks[(size_t)k * T + idx];
    const uint32_t w[4] = {m.x, m.y, m.z, m.w};
#pragma unroll
    for (int wi = 0; wi < 4; ++wi) {
      const uint32_t v = transpose32(w[wi]);  // pages 32q..32q+31 of mask bit j = 32*wi + lane
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

// ------------------------------------------------------------------ the expansion writes the bit vectors

constexpr int kGroup = 8;      // chunks (= 256-leaf subtrees when aligned) per block of expand_to_bitvectors
constexpr int kSubLevels = 8;  // levels of a 256-leaf subtree
constexpr int kTopLevels = 5;  // levels expanded for the group's 8 subtrees together; 32 nodes per subtree below

// One warp's shared memory: the group's level-5 nodes, and a 256-entry buffer that holds the group's
// upper levels (ping-pong halves), then one subtree's levels 6 and 7 and its leaves (the page masks).
struct WarpSmem {
  uint4 node[kGroup * 32];
  uint4 leaf[kChunk];
  uint8_t node_t[kGroup * 32];
  uint8_t leaf_t[kChunk];
};
constexpr int kExpandSmem = 8 * sizeof(WarpSmem);  // 69,632 bytes: 3 blocks per SM

// One GGM level of `items` nodes of this warp, 32 per round: node i at src (seed, t) -> children 2i, 2i + 1
// at dst; `last`: they are leaves (the final correction applied, no t kept). All loads of a round precede
// its stores (__syncwarp), so dst may overlap entries of src that this or an earlier round read.
__device__ __forceinline__ void warp_level(const uint4* src, const uint8_t* src_t, uint4* dst, uint8_t* dst_t,
                                           int items, const uint4& cw, const uint2& tc, bool last,
                                           const uint4& fcw, int lane) {
#pragma unroll 1
  for (int i0 = 0; i0 < items; i0 += 32) {
    const int i = i0 + lane;
    const bool on = i < items;
    uint4 seed = make_uint4(0, 0, 0, 0);
    uint32_t t = 0;
    if (on) {
      seed = src[i];
      t = src_t[i];
    }
    __syncwarp();
    if (on) {
      uint4 l, r;
      uint32_t tl, tr;
      dpf::expand_node(seed, t, cw, tc, l, tl, r, tr);
      if (last) {
        l = dpf::xor_and(l, fcw, 0u - tl);
        r = dpf::xor_and(r, fcw, 0u - tr);
      } else {
        dst_t[2 * i] = static_cast<uint8_t>(tl);
        dst_t[2 * i + 1] = static_cast<uint8_t>(tr);
      }
      dst[2 * i] = l;
      dst[2 * i + 1] = r;
    }
  }
  __syncwarp();
}

// The page mask of leaf `pos` of a `levels`-level subtree (root seed, t): its path walked from the root.
__device__ __forceinline__ uint4 walk_leaf(uint4 seed, uint32_t t, int pos, int levels, const uint4* __restrict__ cw,
                                           const uint2* __restrict__ tc, const uint4& fcw) {
#pragma unroll 1
  for (int l = 0; l < levels; ++l) {
    uint4 left, right;
    uint32_t tl, tr;
    dpf::expand_node(seed, t, __ldg(cw + l), __ldg(tc + l), left, tl, right, tr);
    const bool go_right = (pos >> (levels - 1 - l)) & 1;
    seed = go_right ? right : left;
    t = go_right ? tr : tl;
  }
  return dpf::xor_and(seed, fcw, 0u - t);
}

// Lane holds the masks of pages 32q + lane (q = 0..7) of one chunk for one key (g, its column in the row):
// transposed to the per-bit page vectors of bits j = 32 wi + lane and stored where masks_to_bitvectors puts
// them (dst: the chunk's key tile, rows of row_words = ktp * 64; the pipelined kernel's rows hold K * 8):
// word g*8 + (q & 3)*2 + (q >> 2) of row j; 32 contiguous bytes per lane and j.
__device__ __forceinline__ void store_bitvectors(const uint4 (&m)[8], uint32_t* __restrict__ dst, int g, int lane,
                                                 int row_words) {
  const WarpTranspose transpose32(lane);
#pragma unroll
  for (int wi = 0; wi < 4; ++wi) {
    uint32_t v[8];
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      const uint32_t x = wi == 0 ? m[q].x : wi == 1 ? m[q].y : wi == 2 ? m[q].z : m[q].w;
      v[q] = transpose32(x);
    }
    uint4* p = reinterpret_cast<uint4*>(dst + (size_t)(wi * 32 + lane) * row_words + g * 8);
    p[0] = make_uint4(v[0], v[4], v[1], v[5]);
    p[1] = make_uint4(v[2], v[6], v[3], v[7]);
  }
}

__device__ __forceinline__ void store_zero(uint32_t* __restrict__ dst, int g, int lane, int row_words) {
  const uint4 z = make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int wi = 0; wi < 4; ++wi) {
    uint4* p = reinterpret_cast<uint4*>(dst + (size_t)(wi * 32 + lane) * row_words + g * 8);
    p[0] = z;
    p[1] = z;
  }
}

// The chunk's 256 masks are in leaf[0..256) (page p0 + i masked by leaf[i]): those of pages outside
// [off, off + count) zeroed, transposed and stored.
__device__ __forceinline__ void emit_chunk(const WarpSmem& w, int p0, int off, int count,
                                           uint32_t* __restrict__ dst, int g, int lane, int row_words) {
  uint4 m[8];
#pragma unroll
  for (int q = 0; q < 8; ++q) {
    const int p = p0 + q * 32 + lane;
    m[q] = (p >= off && p < off + count) ? w.leaf[q * 32 + lane] : make_uint4(0, 0, 0, 0);
  }
  __syncwarp();  // every lane has read the leaves before the next subtree overwrites them
  store_bitvectors(m, dst, g, lane, row_words);
}

// Where a tile's pages lie in the chunks read: pages [off, off + count), chunk ci of the read starting at DB
// page first_page + 256 ci, DB page p masked by leaf p + delta.
struct TileGeometry {
  int off, count, first_page;
  long long delta;

  __device__ __forceinline__ TileGeometry(const int* offset, long long lo, int count_, int db_chunks, int nch)
      : off(*offset), count(count_), first_page(first_chunk(*offset, db_chunks, nch) * kChunk), delta(lo - *offset) {}
  __device__ __forceinline__ int page0(int ci) const { return first_page + ci * kChunk; }
  __device__ __forceinline__ bool live(int ci) const { return page0(ci) < off + count && page0(ci) + kChunk > off; }
};

// One warp: key k's per-bit page vectors of chunks [c0, c1) (at most kGroup) from its S subtree roots
// (roots, root_t from entry k * S; cw, tc its `levels` corrections below them, kf its final one), written to
// dst0 + (ci - c0) * chunk_words in rows of row_words, column g; chunks without tile pages get zeros.
// Aligned case (levels = 8, delta % 256 = 0; uniform): chunk ci is one subtree; the warp expands the group's
// subtrees' top 5 levels together (9 rounds of 32 lanes instead of 5 per subtree), then each subtree's last 3
// levels (7 rounds), so about 8.1 ChaCha8 pairs per lane and chunk (255/32 = 7.97 at best). Otherwise (shard
// heads, small tails: rare) each lane walks its leaves' paths from their subtree roots: `levels` pairs per
// leaf, 8x the work at levels = 8.
__device__ __forceinline__ void expand_group(WarpSmem& w, const TileGeometry& tg, const uint4* __restrict__ roots,
                                             const uint32_t* __restrict__ root_t, size_t k_roots,
                                             const uint4* __restrict__ cw, const uint2* __restrict__ tc, const uint4& kf,
                                             int levels, int c0, int c1, uint32_t* __restrict__ dst0,
                                             size_t chunk_words, int row_words, int g, int lane) {
  auto dst_of = [&](int ci) { return dst0 + (size_t)(ci - c0) * chunk_words; };
  if (levels != kSubLevels || (tg.delta & (kChunk - 1)) != 0) {  // unaligned: walk each leaf's path
#pragma unroll 1
    for (int ci = c0; ci < c1; ++ci) {
      if (!tg.live(ci)) {
        store_zero(dst_of(ci), g, lane, row_words);
        continue;
      }
#pragma unroll 1
      for (int q = 0; q < 8; ++q) {
        const int p = tg.page0(ci) + q * 32 + lane;
        uint4 m = make_uint4(0, 0, 0, 0);
        if (p >= tg.off && p < tg.off + tg.count) {
          const long long leaf = p + tg.delta;
          const size_t r = k_roots + (size_t)(leaf >> levels);
          m = walk_leaf(roots[r], root_t[r] & 1u, (int)(leaf & ((1ll << levels) - 1)), levels, cw, tc, kf);
        }
        w.leaf[q * 32 + lane] = m;  // read back by this lane only
      }
      emit_chunk(w, tg.page0(ci), tg.off, tg.count, dst_of(ci), g, lane, row_words);
    }
    return;
  }

  // Aligned. Level 0: the group's subtree roots (zeros for chunks without tile pages: expanded, never used).
  if (lane < kGroup) {
    const int ci = c0 + lane;
    uint4 seed = make_uint4(0, 0, 0, 0);
    uint32_t t = 0;
    if (ci < c1 && tg.live(ci)) {
      const size_t r = k_roots + (size_t)((tg.page0(ci) + tg.delta) >> kSubLevels);
      seed = roots[r];
      t = root_t[r] & 1u;
    }
    w.leaf[lane] = seed;
    w.leaf_t[lane] = static_cast<uint8_t>(t);
  }
  __syncwarp();
  // Levels 0..4 of the 8 subtrees (8 << l nodes at level l, node i of subtree i >> l) in leaf[0..128) /
  // leaf[128..256) by parity; level 5 into node[subtree*32 + position].
#pragma unroll 1
  for (int l = 0; l < kTopLevels; ++l) {
    const int in = (l & 1) * 128, out = ((l + 1) & 1) * 128;
    const bool to_node = l == kTopLevels - 1;
    warp_level(w.leaf + in, w.leaf_t + in, to_node ? w.node : w.leaf + out, to_node ? w.node_t : w.leaf_t + out,
               kGroup << l, __ldg(cw + l), __ldg(tc + l), false, kf, lane);
  }
  // Each subtree: levels 5 -> 6 (leaf[64..128)), 6 -> 7 (leaf[128..256)), 7 -> leaves (leaf[0..256)), emitted.
#pragma unroll 1
  for (int ci = c0; ci < c1; ++ci) {
    if (!tg.live(ci)) {
      store_zero(dst_of(ci), g, lane, row_words);
      continue;
    }
#pragma unroll 1
    for (int d = 0; d < kSubLevels - kTopLevels; ++d) {
      const bool last = d == kSubLevels - kTopLevels - 1;
      const uint4* src = d == 0 ? w.node + (ci - c0) * 32 : w.leaf + (32 << d);
      const uint8_t* src_t = d == 0 ? w.node_t + (ci - c0) * 32 : w.leaf_t + (32 << d);
      const int out = last ? 0 : 64 << d;
      warp_level(src, src_t, w.leaf + out, w.leaf_t + out, 32 << d, __ldg(cw + kTopLevels + d),
                 __ldg(tc + kTopLevels + d), last, kf, lane);
    }
    emit_chunk(w, tg.page0(ci), tg.off, tg.count, dst_of(ci), g, lane, row_words);
  }
}

// Subtree roots -> the per-bit page vectors mt[ci][j][kt][64] that masks_to_bitvectors would write for
// masks = leaves [lo, lo + count) of the S * 2^levels, leaf lo + i masking DB page off + i (off = *offset).
// Block (chunk group, kt): chunks kGroup*x .. + kGroup of the nch read, warp g = key kt*8 + g (expand_group);
// pages outside [off, off + count) and keys >= K get 0.
#ifndef MORPHOGEN_EXPAND_MINB
#define MORPHOGEN_EXPAND_MINB 3  // blocks per SM the expansion's registers are sized for (a variant to time)
#endif
__global__ void __launch_bounds__(256, MORPHOGEN_EXPAND_MINB) expand_to_bitvectors(
    const uint4* __restrict__ roots, const uint32_t* __restrict__ root_t, const uint4* __restrict__ scw,
    const uint2* __restrict__ tcw, const uint4* __restrict__ fcw, const int* __restrict__ offset, int K, int S,
    int levels, long long lo, int count, int db_chunks, int nch, int ktp, uint32_t* __restrict__ mt) {
  extern __shared__ uint4 smem_raw[];
  WarpSmem& w = reinterpret_cast<WarpSmem*>(smem_raw)[threadIdx.x >> 5];
  const int lane = threadIdx.x & 31, g = threadIdx.x >> 5, kt = blockIdx.y, k = kt * 8 + g;
  const int c0 = blockIdx.x * kGroup, c1 = min(c0 + kGroup, nch);
  const size_t chunk_words = (size_t)kJ * ktp * 64;
  uint32_t* dst0 = mt + (size_t)c0 * chunk_words + (size_t)kt * 64;
  if (k >= K) {  // padding keys of the last key tile: zero vectors
    for (int ci = c0; ci < c1; ++ci) store_zero(dst0 + (size_t)(ci - c0) * chunk_words, g, lane, ktp * 64);
    return;
  }
  const TileGeometry tg(offset, lo, count, db_chunks, nch);
  expand_group(w, tg, roots, root_t, (size_t)k * S, scw + (size_t)k * levels, tcw + (size_t)k * levels, __ldg(fcw + k),
               levels, c0, c1, dst0, chunk_words, ktp * 64, g, lane);
}

__device__ __forceinline__ void bmma(int (&c)[4], const uint4& a, const uint2& b) {
  asm volatile(
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b.x), "r"(b.y));
}

#ifndef MORPHOGEN_SCAN_PIPE
#define MORPHOGEN_SCAN_PIPE 0  // 1: bmma_scan loads the next chunk before the MMAs of this one (a variant to time)
#endif

#if MORPHOGEN_SCAN_PIPE
// A read-only load that bypasses L1 and asks L2 to fetch the whole 256-byte sector group.
__device__ __forceinline__ uint4 ld_nc_l2_256(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ uint2 ld_nc_l2_256(const uint2* p) {
  uint2 v;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}
#endif

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

#if MORPHOGEN_SCAN_PIPE
  // Software-pipelined: chunk ci + 1's operands are loaded (with a 256-byte L2 prefetch hint) before chunk ci's
  // MMAs issue, so each warp keeps its next reads in flight under its MMAs.
  auto load = [&](int ci, uint4 (&a)[kRtPerWarp], uint2 (&b)[KG]) {
    const uint4* arow = words + (((size_t)(start + ci) * kJ + j) * kRt + rt0) * 32 + lane;
    const uint2* brow = mt + (((size_t)ci * kJ + j) * ktp + kt0) * 32 + lane;
#pragma unroll
    for (int i = 0; i < kRtPerWarp; ++i) a[i] = ld_nc_l2_256(arow + i * 32);
#pragma unroll
    for (int i = 0; i < KG; ++i) b[i] = ld_nc_l2_256(brow + i * 32);
  };
  uint4 a[kRtPerWarp];
  uint2 b[KG];
  if (lo < hi) load(lo, a, b);
#pragma unroll 1
  for (int ci = lo; ci < hi; ++ci) {
    uint4 an[kRtPerWarp];
    uint2 bn[KG];
    load(ci + 1 < hi ? ci + 1 : ci, an, bn);
#pragma unroll
    for (int i = 0; i < kRtPerWarp; ++i)
#pragma unroll
      for (int t = 0; t < KG; ++t) bmma(acc[i][t], a[i], b[t]);
#pragma unroll
    for (int i = 0; i < kRtPerWarp; ++i) a[i] = an[i];
#pragma unroll
    for (int i = 0; i < KG; ++i) b[i] = bn[i];
  }
#else
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

#endif

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

// bmma_scan over the nch chunks from first_chunk(*off) (tile pages [*off, *off + T)) into out (zeroed).
void launch_scan(cudaStream_t stream, ffi::Buffer<ffi::U32>& words, const int* off, int K, int T, int db_chunks,
                 int nch, int ktp, int kg, const uint32_t* scratch, uint32_t* o) {
  const int groups = ktp / kg;
  const int target_blocks = 8 * 132;
  int splits = (target_blocks + groups * 64 - 1) / (groups * 64);
  splits = max(1, min(splits, nch));
  const int per_split = (nch + splits - 1) / splits;
  splits = (nch + per_split - 1) / per_split;
  const dim3 grid(groups, kJ / 2, splits);
  const auto* w4 = reinterpret_cast<const uint4*>(words.typed_data());
  const auto* m2 = reinterpret_cast<const uint2*>(scratch);
  if (kg == 1) bmma_scan<1><<<grid, 256, 0, stream>>>(w4, m2, off, K, T, db_chunks, nch, ktp, per_split, o);
  else if (kg == 2) bmma_scan<2><<<grid, 256, 0, stream>>>(w4, m2, off, K, T, db_chunks, nch, ktp, per_split, o);
  else if (kg == 3) bmma_scan<3><<<grid, 256, 0, stream>>>(w4, m2, off, K, T, db_chunks, nch, ktp, per_split, o);
  else bmma_scan<4><<<grid, 256, 0, stream>>>(w4, m2, off, K, T, db_chunks, nch, ktp, per_split, o);
}

// ------------------------------------------------------------------ one kernel: the expansion beside the scan

// For one key tile (K <= 8: Q <= 2 queries) the scan is bound by HBM and the expansion, run before it, adds its
// whole time (~19% at Q = 1). Here each block (one per SM, persistent) walks its groups of kGroup chunks as a
// two-stage pipeline: K expander warps (one per key, expand_group) write the next group's vectors into one half
// of the block's scratch while 16 scanner warps read the DB against the other half; a block barrier swaps them.
constexpr int kPipeScanWarps = 16;  // scanner w: bits j = 32 (w >> 2) + [0, 32), r-tiles 4 (w & 3) + [0, 4)
constexpr int kPipeMaxKeys = 8;
constexpr int kPipeMaxBlocks = 192;  // the scratch is sized for this many blocks (the grid: one per SM, at most this)
constexpr int kPipeThreads = (kPipeScanWarps + kPipeMaxKeys) * 32;

int pipe_smem(int K) { return K * (int)sizeof(WarpSmem) + K * 1024 * (int)sizeof(uint32_t); }

// Scanner `warp`'s share of chunks [clo, chi) of the group starting at chunk c0: vectors (rows of K * 8 words, key
// g at g * 8) in buf, the DB chunks from `start`; its answer bits XORed into sout (K, 1024), which every
// (key, word) reaches from exactly one lane of one warp: no atomics.
__device__ __forceinline__ void scan_group(const uint4* __restrict__ words, const uint32_t* buf, int start, int c0,
                                           int clo, int chi, int K, int warp, int lane, uint32_t* sout) {
  const int jw = warp >> 2, rt0 = (warp & 3) * kRtPerWarp, g = lane >> 2, tig = lane & 3;
  uint32_t bits[kRtPerWarp][4] = {};
#pragma unroll 1
  for (int jj = 0; jj < 32; ++jj) {
    const int j = jw * 32 + jj;
    int acc[kRtPerWarp][4] = {};
#pragma unroll 2
    for (int ci = clo; ci < chi; ++ci) {
      const uint4* arow = words + (((size_t)(start + ci) * kJ + j) * kRt + rt0) * 32 + lane;
      uint4 a[kRtPerWarp];
#pragma unroll
      for (int i = 0; i < kRtPerWarp; ++i) a[i] = __ldcs(arow + i * 32);  // streamed: the vectors keep L2
      uint2 b = make_uint2(0, 0);
      if (g < K)  // written in this kernel: a coherent load, not the read-only path
        b = __ldcg(reinterpret_cast<const uint2*>(buf + ((size_t)(ci - c0) * kJ + j) * K * 8 + g * 8 + tig * 2));
#pragma unroll
      for (int i = 0; i < kRtPerWarp; ++i) bmma(acc[i], a[i], b);
    }
#pragma unroll
    for (int i = 0; i < kRtPerWarp; ++i)
#pragma unroll
      for (int r = 0; r < 4; ++r) bits[i][r] |= (uint32_t)(acc[i][r] & 1) << jj;
  }
#pragma unroll
  for (int i = 0; i < kRtPerWarp; ++i)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int key = tig * 2 + (r & 1), row = (rt0 + i) * 16 + g + ((r >> 1) << 3);
      if (key < K) sout[key * 1024 + row * 4 + jw] ^= bits[i][r];
    }
}

// A block's group `it` starts at chunk ramp_start(it) of its range: groups of 1, 2 and 4 chunks, then of 8. The
// first group's expansion has no scan beside it (the pipeline's fill); a 1-chunk group expands in about a
// quarter of the time of 8 (16 rounds of 32 lanes against 65), and each small group's scan outlasts the next
// one's expansion.
__device__ __forceinline__ int ramp_start(int it) { return it < 3 ? (1 << it) - 1 : 7 + (it - 3) * kGroup; }

// expand_to_bitvectors then bmma_scan for K <= 8 keys, pipelined: block b takes an equal share of the chunks
// (to one chunk: whole groups of 8 dealt round robin left up to 8 MiB of reads to a few SMs at the end), in
// groups from ramp_start; at step it its expanders fill half (it + 1) & 1 of its scratch (2 x kGroup chunks x
// 128 x K x 8 words) with group it + 1 while its scanners read half it & 1; out gets each block's answer once.
__global__ void __launch_bounds__(kPipeThreads, 1) expand_scan_pipelined(
    const uint4* __restrict__ words, const uint4* __restrict__ roots, const uint32_t* __restrict__ root_t,
    const uint4* __restrict__ scw, const uint2* __restrict__ tcw, const uint4* __restrict__ fcw,
    const int* __restrict__ offset, int K, int S, int levels, long long lo, int count, int db_chunks, int nch,
    uint32_t* __restrict__ scratch, uint32_t* __restrict__ out) {
  extern __shared__ uint4 smem_raw[];
  WarpSmem* wsm = reinterpret_cast<WarpSmem*>(smem_raw);
  uint32_t* sout = reinterpret_cast<uint32_t*>(wsm + K);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, k = warp - kPipeScanWarps;
  for (int e = threadIdx.x; e < K * 1024; e += blockDim.x) sout[e] = 0;
  const TileGeometry tg(offset, lo, count, db_chunks, nch);
  const int start = first_chunk(tg.off, db_chunks, nch);
  const int tile_lo = tg.off / kChunk - start, tile_hi = (tg.off + count - 1) / kChunk - start + 1;
  const size_t chunk_words = (size_t)kJ * K * 8, half = kGroup * chunk_words;
  uint32_t* buf = scratch + (size_t)blockIdx.x * 2 * half;
  const int first = (int)((long long)nch * blockIdx.x / gridDim.x);  // this block's chunks [first, last)
  const int last = (int)((long long)nch * (blockIdx.x + 1) / gridDim.x);
  int mine = 0;
  while (first + ramp_start(mine) < last) ++mine;
#pragma unroll 1
  for (int it = -1; it < mine; ++it) {
    if (k >= 0) {
      if (it + 1 < mine) {
        const int c0 = first + ramp_start(it + 1);
        expand_group(wsm[k], tg, roots, root_t, (size_t)k * S, scw + (size_t)k * levels, tcw + (size_t)k * levels,
                     __ldg(fcw + k), levels, c0, min(first + ramp_start(it + 2), last), buf + ((it + 1) & 1) * half,
                     chunk_words, K * 8, k, lane);
      }
    } else if (it >= 0) {
      const int c0 = first + ramp_start(it), c1 = min(first + ramp_start(it + 1), last);
      scan_group(words, buf + (it & 1) * half, start, c0, max(c0, tile_lo), min(c1, tile_hi), K, warp, lane, sout);
    }
    __syncthreads();
  }
  for (int e = threadIdx.x; e < K * 1024; e += blockDim.x) {
    const uint32_t v = sout[e];
    if (v) atomicXor(out + e, v);
  }
}

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
  if (stages & 2) launch_scan(stream, words, off, K, T, db_chunks, nch, ktp, kg, scratch->typed_data(), out->typed_data());
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return ffi::Error::Internal(std::string("bmma launch: ") + cudaGetErrorString(err));
  return ffi::Error::Success();
}

ffi::Error BmmaExpandXorImpl(cudaStream_t stream, ffi::Buffer<ffi::U32> words, ffi::Buffer<ffi::S32> row,
                             ffi::Buffer<ffi::U32> roots, ffi::Buffer<ffi::U32> root_t, ffi::Buffer<ffi::U32> scw,
                             ffi::Buffer<ffi::U32> tcw, ffi::Buffer<ffi::U32> fcw, ffi::ResultBuffer<ffi::U32> out,
                             ffi::ResultBuffer<ffi::U32> scratch, int64_t lo, int64_t count, int32_t kg,
                             int32_t stages) {
  const auto wd = words.dimensions(), rd = roots.dimensions(), td = root_t.dimensions(), cd = scw.dimensions();
  const auto tcd = tcw.dimensions(), fd = fcw.dimensions();
  if (wd.size() != 2 || wd[1] != 1024 || wd[0] % kChunk != 0)
    return ffi::Error::InvalidArgument("bmma: words must be (256*C, 1024) u32");
  if (rd.size() != 3 || rd[2] != 4) return ffi::Error::InvalidArgument("bmma: roots must be (K, S, 4) u32");
  const int K = static_cast<int>(rd[0]), S = static_cast<int>(rd[1]);
  if (td.size() != 2 || td[0] != K || td[1] != S) return ffi::Error::InvalidArgument("bmma: root_t must be (K, S) u32");
  if (cd.size() != 3 || cd[0] != K || cd[2] != 4 || cd[1] > kSubLevels)
    return ffi::Error::InvalidArgument("bmma: scw must be (K, levels <= 8, 4) u32");
  const int levels = static_cast<int>(cd[1]);
  if (tcd.size() != 3 || tcd[0] != K || tcd[1] != levels || tcd[2] != 2)
    return ffi::Error::InvalidArgument("bmma: tcw must be (K, levels, 2) u32");
  if (fd.size() != 2 || fd[0] != K || fd[1] != 4) return ffi::Error::InvalidArgument("bmma: fcw must be (K, 4) u32");
  if (kg < 1 || kg > 4) return ffi::Error::InvalidArgument("bmma: kg must be 1, 2, 3 or 4");
  if (lo < 0 || count < 1 || count > (1ll << 30) || lo + count > ((int64_t)S << levels))
    return ffi::Error::InvalidArgument("bmma: leaves [lo, lo + count) must lie in the S subtrees (count <= 2^30)");
  const int T = static_cast<int>(count);
  const int db_chunks = static_cast<int>(wd[0] / kChunk);
  const int nch = chunk_span(T, db_chunks);
  const int kt = (K + 7) / 8, ktp = (kt + kg - 1) / kg * kg;
  if (stages != 4 && scratch->element_count() < (size_t)nch * kJ * ktp * 64)
    return ffi::Error::InvalidArgument("bmma: scratch too small for (nch, 128, KTp, 64)");
  const int* off = row.typed_data();

  cudaMemsetAsync(out->typed_data(), 0, (size_t)K * 1024 * sizeof(uint32_t), stream);
  if (stages == 4) {  // one pipelined kernel (K <= 8)
    if (K > kPipeMaxKeys) return ffi::Error::InvalidArgument("bmma: stages=4 (pipelined) takes at most 8 keys");
    int dev = 0, sms = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    const int blocks = min(min((nch + kGroup - 1) / kGroup, sms), kPipeMaxBlocks);
    if (scratch->element_count() < (size_t)blocks * 2 * kGroup * kJ * K * 8)
      return ffi::Error::InvalidArgument("bmma: scratch too small for the pipelined kernel's blocks");
    const int smem = pipe_smem(K);
    cudaFuncSetAttribute(expand_scan_pipelined, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    expand_scan_pipelined<<<blocks, (kPipeScanWarps + K) * 32, smem, stream>>>(
        reinterpret_cast<const uint4*>(words.typed_data()), reinterpret_cast<const uint4*>(roots.typed_data()),
        root_t.typed_data(), reinterpret_cast<const uint4*>(scw.typed_data()),
        reinterpret_cast<const uint2*>(tcw.typed_data()), reinterpret_cast<const uint4*>(fcw.typed_data()), off, K, S,
        levels, lo, T, db_chunks, nch, scratch->typed_data(), out->typed_data());
  }
  if (stages & 1) {
    cudaFuncSetAttribute(expand_to_bitvectors, cudaFuncAttributeMaxDynamicSharedMemorySize, kExpandSmem);
    const dim3 grid((nch + kGroup - 1) / kGroup, ktp);
    expand_to_bitvectors<<<grid, 256, kExpandSmem, stream>>>(
        reinterpret_cast<const uint4*>(roots.typed_data()), root_t.typed_data(),
        reinterpret_cast<const uint4*>(scw.typed_data()), reinterpret_cast<const uint2*>(tcw.typed_data()),
        reinterpret_cast<const uint4*>(fcw.typed_data()), off, K, S, levels, lo, T, db_chunks, nch, ktp,
        scratch->typed_data());
  }
  if (stages & 2) launch_scan(stream, words, off, K, T, db_chunks, nch, ktp, kg, scratch->typed_data(), out->typed_data());
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return ffi::Error::Internal(std::string("bmma expand launch: ") + cudaGetErrorString(err));
  return ffi::Error::Success();
}

}  // namespace

// The bindings, shared by each handler and its command-buffer-compatible twin below.
#define MORPHOGEN_BMMA_MASKED_XOR_BINDING                                          \
  ffi::Ffi::Bind()                                                                \
      .Ctx<ffi::PlatformStream<cudaStream_t>>()                                   \
      .Arg<ffi::Buffer<ffi::U32>>() /* words: (256*C, 1024) bit-sliced layout */  \
      .Arg<ffi::Buffer<ffi::S32>>() /* offset: the tile's first page, scalar */   \
      .Arg<ffi::Buffer<ffi::U32>>() /* masks: (K, T, 4) */                        \
      .Ret<ffi::Buffer<ffi::U32>>() /* out: (K, 1024) answers */                  \
      .Ret<ffi::Buffer<ffi::U32>>() /* scratch: per-bit page vectors */           \
      .Attr<int32_t>("kg")                                                        \
      .Attr<int32_t>("stages")

#define MORPHOGEN_BMMA_EXPAND_XOR_BINDING                                          \
  ffi::Ffi::Bind()                                                                \
      .Ctx<ffi::PlatformStream<cudaStream_t>>()                                   \
      .Arg<ffi::Buffer<ffi::U32>>() /* words: (256*C, 1024) bit-sliced layout */  \
      .Arg<ffi::Buffer<ffi::S32>>() /* row: the window's first DB page, scalar */ \
      DPF_FFI_SUBTREE_ARGS                                                         \
      .Ret<ffi::Buffer<ffi::U32>>() /* out: (K, 1024) answers */                  \
      .Ret<ffi::Buffer<ffi::U32>>() /* scratch: per-bit page vectors */           \
      .Attr<int64_t>("lo")                                                        \
      .Attr<int64_t>("count")                                                     \
      .Attr<int32_t>("kg")                                                        \
      .Attr<int32_t>("stages")

// The default targets: XLA never captures them into a command buffer (CUDA graph).
XLA_FFI_DEFINE_HANDLER_SYMBOL(MorphogenBmmaMaskedXor, BmmaMaskedXorImpl, MORPHOGEN_BMMA_MASKED_XOR_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MorphogenBmmaExpandXor, BmmaExpandXorImpl, MORPHOGEN_BMMA_EXPAND_XOR_BINDING);

// The same handlers declared command-buffer compatible (targets *_graph; cuda/capture.py picks them only while
// graph_replay lowers an executable that asks XLA to capture custom calls). Capture-safe: each body only enqueues
// work on `stream` (cudaMemsetAsync, kernel launches) into buffers XLA passes in; cudaGetDevice,
// cudaDeviceGetAttribute, cudaFuncSetAttribute and cudaGetLastError are not stream operations; no allocation,
// no synchronous copy, no stream or device synchronisation, no query of the stream's state. What the handler
// computes on the host (grid sizes from shapes and attributes) is fixed for the executable, so a recorded graph
// replays the same launches.
XLA_FFI_DEFINE_HANDLER_SYMBOL(MorphogenBmmaMaskedXorGraph, BmmaMaskedXorImpl, MORPHOGEN_BMMA_MASKED_XOR_BINDING,
                              {ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(MorphogenBmmaExpandXorGraph, BmmaExpandXorImpl, MORPHOGEN_BMMA_EXPAND_XOR_BINDING,
                              {ffi::Traits::kCmdBufferCompatible});
