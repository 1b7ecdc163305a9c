"""Binary tensor-core (mma.m16n8k256 .b1 .and.popc) masked XOR on a bit-sliced database, through jax.ffi.

``masked_xor_bmma(words, page_offset, masks)`` is ``masked_xor_at`` (docs/engine-interface.md) on the
layout of pir/bitsliced.py. The CUDA source (bmma.cu, beside this file) is compiled with nvcc on first
use into a cache folder keyed by the source's hash (``$MORPHOGEN_BMMA_CACHE``, default
``~/.cache/morphogen_exp/bmma``) and registered as an XLA FFI target on the CUDA platform. Importing
this module needs neither CUDA nor nvcc; calling it without them raises ``BmmaUnavailable`` (one line).
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

__all__ = ["BmmaUnavailable", "build", "find_nvcc", "key_group", "masked_xor_bmma"]

TARGET = "morphogen_bmma_masked_xor"
SOURCE = Path(__file__).with_name("bmma.cu")
# Hopper's own target (HOPPER.md: the -gencode form); $MORPHOGEN_BMMA_ARCH overrides (e.g. sm_80).
DEFAULT_ARCH = "sm_90a"
_CUDA_HOMES = ("CUDA_HOME", "CUDA_PATH")  # environment variables naming a CUDA toolkit
_DEFAULT_CUDA_HOME = "/usr/local/cuda"


class BmmaUnavailable(RuntimeError):
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
    raise BmmaUnavailable("nvcc not found: install the CUDA toolkit (or pip install nvidia-cuda-nvcc-cu12), "
                          "or set MORPHOGEN_NVCC to its path")


def _cache_dir() -> Path:
    env = os.environ.get("MORPHOGEN_BMMA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "morphogen_exp" / "bmma"


def _arch_flags(arch: str) -> list[str]:
    num = arch.removeprefix("sm_")
    return [f"-gencode=arch=compute_{num},code=sm_{num}"]


def build(force: bool = False) -> Path:
    """Compile bmma.cu into a shared library (cached by source, arch and JAX include dir); its path."""
    arch = os.environ.get("MORPHOGEN_BMMA_ARCH", DEFAULT_ARCH)
    include = jax.ffi.include_dir()
    digest = hashlib.sha256(SOURCE.read_bytes() + f"{arch}|{include}|{jax.__version__}".encode()).hexdigest()
    lib = _cache_dir() / digest[:16] / "libmorphogen_bmma.so"
    if lib.is_file() and not force:
        return lib
    nvcc = find_nvcc()
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    cmd = [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", *_arch_flags(arch),
           f"-I{include}", str(SOURCE), "-o", str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        (lib.parent / "build.log").write_text(res.stdout + res.stderr)
        raise BmmaUnavailable(f"nvcc failed building {SOURCE.name} (exit {res.returncode}); "
                              f"log: {lib.parent / 'build.log'}")
    tmp.replace(lib)  # atomic: concurrent builders never load a half-written library
    return lib


@functools.cache
def _register() -> None:
    if jax.default_backend() != "gpu":
        raise BmmaUnavailable(f"the bmma kernel needs a CUDA GPU backend; {jax.default_backend()=}: "
                              "use impl='jnp' or run on a GPU host")
    lib = ctypes.cdll.LoadLibrary(str(build()))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.MorphogenBmmaMaskedXor), platform="CUDA")


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
    _register()
    k, t, _ = masks.shape
    nch = chunk_span(t, words.shape[0] // CHUNK_PAGES)
    kg, ktp = key_group(k)
    call = jax.ffi.ffi_call(
        TARGET,
        (jax.ShapeDtypeStruct((k, PAGE_WORDS), jnp.uint32),
         jax.ShapeDtypeStruct((nch * 128 * ktp * 64,), jnp.uint32)),  # masks as per-bit page vectors
        vmap_method="sequential",
    )
    out, _ = call(words, jnp.asarray(page_offset, jnp.int32).reshape(()), masks, kg=np.int32(kg),
                  stages=np.int32(stages))
    return out

