// Host-side check of dpf.cuh's ChaCha8 under every MORPHOGEN_CHACHA_FMA mask: the header compiled as host
// code (MORPHOGEN_DPF_HOST), where rotl_fma computes what its two PTX instructions compute (the low and high
// words of x * 2^R, added). Built by tests/test_sass.py with nvcc:
//   nvcc -std=c++17 -DMORPHOGEN_DPF_HOST -I morphogen_exp/pir/cuda chacha_host_check.cu -o check
// stdin: M seeds, 4 little-endian uint32 words each; stdout: for mask 0..15 in turn, for each seed, block 0's
// words 0..7 then block 1's words 0..1 (10 uint32 a seed), which the test compares with pir/prg.py.
#include <cstdint>
#include <cstdio>
#include <utility>
#include <vector>

#include "dpf.cuh"  // found through -I morphogen_exp/pir/cuda

template <int M>
void blocks(const std::vector<uint32_t>& seeds, std::vector<uint32_t>& out) {
  for (size_t i = 0; i + 3 < seeds.size(); i += 4) {
    const uint4 s = make_uint4(seeds[i], seeds[i + 1], seeds[i + 2], seeds[i + 3]);
    uint32_t b0[8], b1[2];
    dpf::chacha8<8, M>(s, 0u, b0);
    dpf::chacha8<2, M>(s, 1u, b1);
    out.insert(out.end(), b0, b0 + 8);
    out.insert(out.end(), b1, b1 + 2);
  }
}

template <int... M>
void all_masks(const std::vector<uint32_t>& seeds, std::vector<uint32_t>& out, std::integer_sequence<int, M...>) {
  (blocks<M>(seeds, out), ...);
}

int main() {
  std::vector<uint32_t> seeds;
  uint32_t w;
  while (std::fread(&w, sizeof w, 1, stdin) == 1) seeds.push_back(w);
  if (seeds.empty() || seeds.size() % 4 != 0) {
    std::fprintf(stderr, "stdin must hold a whole number of 4-word seeds, got %zu words\n", seeds.size());
    return 2;
  }
  std::vector<uint32_t> out;
  all_masks(seeds, out, std::make_integer_sequence<int, 16>{});
  return std::fwrite(out.data(), sizeof(uint32_t), out.size(), stdout) == out.size() ? 0 : 1;
}
