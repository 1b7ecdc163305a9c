"""The engine's CUDA kernels, reached through jax.ffi: built with nvcc on first use, one library.

- ``masked_xor_bmma(words, page_offset, masks)`` (bmma.cu): ``masked_xor_at`` (docs/engine-interface.md)
  on the bit-sliced layout of pir/bitsliced.py, on the binary tensor cores (mma.m16n8k256 .b1 .and.popc);
- ``expand_xor_bmma(words, row, roots, ...)`` (bmma.cu): the same scan, its per-bit page vectors written by
  the expansion of the tile's subtree roots (the masks never reach HBM; see pir/bitsliced_ops.py); up to
  ``PIPELINED_MAX_KEYS`` keys in one kernel whose expansion runs beside the scan (``pipelined``);
- ``expand_xor_fused`` (fused.cu, see pir/fused.py): the last GGM levels of a tile expanded in shared
  memory and the masked XOR of the raw pages in the same kernel (the masks never reach HBM).

Every ``*.cu`` beside this file (with the shared ``dpf.cuh``) is compiled into one shared library in a
cache folder keyed by the sources' hash (``$MORPHOGEN_CUDA_CACHE``, default ``~/.cache/morphogen_exp/cuda``)
and its handlers registered as XLA FFI targets on the CUDA platform. Importing this module needs neither
CUDA nor nvcc; calling a kernel without them raises ``CudaUnavailable`` (one line).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from morphogen_exp.pir.bitsliced import CHUNK_PAGES, PAGE_WORDS, chunk_span

__all__ = ["PIPELINED_MAX_KEYS", "CudaUnavailable", "build", "engine_stages", "expand_xor_bmma", "find_nvcc",
           "key_group", "masked_xor_bmma", "pipelined", "register", "scratch_words"]

HERE = Path(__file__).parent
SOURCES = tuple(sorted(HERE.glob("*.cu")))
HEADERS = tuple(sorted(HERE.glob("*.cuh")))
# FFI target name -> the handler symbol the library exports
TARGETS = {"morphogen_bmma_masked_xor": "MorphogenBmmaMaskedXor", "morphogen_expand_xor_fused": "MorphogenExpandXorFused",
           "morphogen_bmma_expand_xor": "MorphogenBmmaExpandXor"}
# Hopper's own target (HOPPER.md: the -gencode form); $MORPHOGEN_CUDA_ARCH overrides (e.g. sm_80).
DEFAULT_ARCH = "sm_90a"
_CUDA_HOMES = ("CUDA_HOME", "CUDA_PATH")  # environment variables naming a CUDA toolkit
_DEFAULT_CUDA_HOME = "/usr/local/cuda"
# bmma.cu's expand_scan_pipelined: one key tile (kPipeMaxKeys), groups of 8 chunks (kGroup), at most 192 blocks
PIPELINED_MAX_KEYS, _GROUP_CHUNKS, _PIPE_MAX_BLOCKS = 8, 8, 192


class CudaUnavailable(RuntimeError):
    """The kernel cannot be built or run here (no nvcc, no CUDA backend, a failed build)."""


def find_nvcc() -> str:
    """nvcc from $MORPHOGEN_NVCC, PATH, $CUDA_HOME/bin or /usr/local/cuda/bin."""
    cands = [os.environ.get("MORPHOGEN_NVCC"), shutil.which("nvcc")]
    for home in (*(os.environ.get(v) for v in _CUDA_HOMES), _DEFAULT_CUDA_HOME):
        if home:
            cands.append(str(Path(home) / "bin" / "nvcc"))
    for c in cands:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    # pip's nvidia-cuda-nvcc-cu12 (what jax[cuda12] brings) holds ptxas and headers but no nvcc driver (12.9.86, checked)
    raise CudaUnavailable("nvcc not found: install the CUDA toolkit's compiler (apt install cuda-nvcc-12-x, or "
                          "conda install -c nvidia cuda-nvcc), "
                          "or set MORPHOGEN_NVCC to its path")


def _cache_dir() -> Path:
    env = os.environ.get("MORPHOGEN_CUDA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "morphogen_exp" / "cuda"


def _arch_flags(arch: str) -> list[str]:
    num = arch.removeprefix("sm_")
    return [f"-gencode=arch=compute_{num},code=sm_{num}"]


def build(force: bool = False) -> Path:
    """Compile the *.cu sources into one shared library (cached by sources, arch and JAX include dir); its path."""
    arch = os.environ.get("MORPHOGEN_CUDA_ARCH", DEFAULT_ARCH)
    include = jax.ffi.include_dir()
    text = b"".join(f.name.encode() + f.read_bytes() for f in (*SOURCES, *HEADERS))
    digest = hashlib.sha256(text + f"{arch}|{include}|{jax.__version__}".encode()).hexdigest()
    lib = _cache_dir() / digest[:16] / "libmorphogen_cuda.so"
    if lib.is_file() and not force:
        return lib
    nvcc = find_nvcc()
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    cmd = [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", *_arch_flags(arch),
           f"-I{include}", f"-I{HERE}", *map(str, SOURCES), "-o", str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        (lib.parent / "build.log").write_text(res.stdout + res.stderr)
        raise CudaUnavailable(f"nvcc failed building {', '.join(f.name for f in SOURCES)} (exit {res.returncode}); "
                              f"log: {lib.parent / 'build.log'}")
    tmp.replace(lib)  # atomic: concurrent builders never load a half-written library
    return lib


@functools.cache
def register() -> None:
    """Build (if needed) and load the library, and register every handler as an FFI target (once)."""
    if jax.default_backend() != "gpu":
        raise CudaUnavailable(f"the CUDA kernels need a CUDA GPU backend; {jax.default_backend()=}: "
                              "use impl='jnp' or run on a GPU host")
    lib = ctypes.cdll.LoadLibrary(str(build()))
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="CUDA")


def key_group(num_keys: int) -> tuple[int, int]:
    """(kg, ktp): key tiles of 8 per warp (1..4, the least padding, then the largest) and the padded
    key-tile count, a multiple of kg."""
    kt = -(-num_keys // 8)
    if kt <= 4:
        return kt, kt
    kg = min((4, 3), key=lambda g: (-(-kt // g) * g, -g))
    return kg, -(-kt // kg) * kg


def masked_xor_bmma(
    words: jax.Array, page_offset: jax.Array | int, masks: jax.Array, stages: int = 3
) -> jax.Array:
    """words (256*C, 1024) u32 bit-sliced, the tile's first page (int32 scalar), masks (K, T, 4) u32
    -> (K, 1024) u32: XOR over the tile's pages of page & mask, on the binary tensor cores.
    stages (benchmarks only): 1 runs only the mask transpose, 2 only the MMA scan; 3 both."""
    register()
    k, t, _ = masks.shape
    kg, _ = key_group(k)
    call = jax.ffi.ffi_call(
        "morphogen_bmma_masked_xor",
        (jax.ShapeDtypeStruct((k, PAGE_WORDS), jnp.uint32),
         jax.ShapeDtypeStruct((scratch_words(k, t, words.shape[0]),), jnp.uint32)),  # masks as per-bit page vectors
        vmap_method="sequential",
    )
    out, _ = call(words, jnp.asarray(page_offset, jnp.int32).reshape(()), masks, kg=np.int32(kg),
                  stages=np.int32(stages))
    return out



def pipelined(num_keys: int) -> bool:
    """Whether ``expand_xor_bmma`` runs one pipelined kernel (the expansion beside the scan) for this many keys."""
    return num_keys <= PIPELINED_MAX_KEYS


def engine_stages(num_keys: int) -> int:
    """The ``stages`` of ``expand_xor_bmma`` the engine runs: 4 (the pipelined kernel) where ``pipelined``, else 3."""
    return 4 if pipelined(num_keys) else 3


def scratch_words(num_keys: int, tile_pages: int, db_rows: int | None, stages: int = 3) -> int:
    """u32 words of the per-bit page vectors of one call: (chunks read, 128 bits, padded key tiles, 64); for the
    pipelined kernel (stages=4) two groups of 8 chunks (128 bits, num_keys x 8) per block, one block per SM.
    db_rows: the layout's rows (None: a database larger than the tile, the bound a memory plan uses)."""
    db_chunks = -(-tile_pages // CHUNK_PAGES) + 1 if db_rows is None else db_rows // CHUNK_PAGES
    chunks = chunk_span(tile_pages, db_chunks)
    if stages == 4:
        blocks = min(-(-chunks // _GROUP_CHUNKS), _PIPE_MAX_BLOCKS)
        return blocks * 2 * _GROUP_CHUNKS * 128 * num_keys * 8
    return chunks * 128 * key_group(num_keys)[1] * 64


def expand_xor_bmma(words: jax.Array, row: jax.Array | int, roots: jax.Array, root_t: jax.Array, seed_cw: jax.Array,
                    t_cw: jax.Array, final_cw: jax.Array, lo: int, count: int, stages: int | None = None) -> jax.Array:
    """words (256*C, 1024) u32 bit-sliced; subtree roots (K, S, 4) u32 and root_t (K, S), each expanded by
    L = seed_cw.shape[1] <= 8 levels (t_cw (K, L, 2), final_cw (K, 4)); leaves [lo, lo + count) of the S * 2^L
    mask DB pages [row, row + count) -> (K, 1024) u32, their masked XOR. One FFI call: the expansion writes
    the per-bit page vectors (bmma.cu expand_to_bitvectors), then the binary-MMA scan reads them; up to 8 keys
    both in one kernel, pipelined (expand_scan_pipelined).
    stages: None what the engine runs (``engine_stages``: 4 where ``pipelined(K)``, else 3); 3 the two kernels one after the other,
    4 the pipelined kernel (K <= 8); benchmarks: 1 only the expansion, 2 only the MMA scan."""
    register()
    k, s = root_t.shape
    if seed_cw.shape[1] > 8 or not 0 <= lo or count < 1 or lo + count > s << seed_cw.shape[1]:
        raise ValueError(f"leaves [{lo}, {lo + count}) of {s} subtrees of {seed_cw.shape[1]} (<= 8) levels")
    if stages is None:
        stages = engine_stages(k)
    if stages not in (1, 2, 3, 4) or (stages == 4 and not pipelined(k)):
        raise ValueError(f"{stages=} must be 1, 2, 3, or 4 with at most {PIPELINED_MAX_KEYS} keys ({k} given)")
    kg, _ = key_group(k)
    call = jax.ffi.ffi_call(
        "morphogen_bmma_expand_xor",
        (jax.ShapeDtypeStruct((k, PAGE_WORDS), jnp.uint32),
         jax.ShapeDtypeStruct((scratch_words(k, count, words.shape[0], stages),), jnp.uint32)),
        vmap_method="sequential",
    )
    out, _ = call(words, jnp.asarray(row, jnp.int32).reshape(()), roots, root_t.astype(jnp.uint32), seed_cw,
                  t_cw.astype(jnp.uint32), final_cw, lo=np.int64(lo), count=np.int64(count), kg=np.int32(kg),
                  stages=np.int32(stages))
    return out
