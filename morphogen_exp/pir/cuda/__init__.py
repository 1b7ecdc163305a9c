"""The CUDA kernels' build: every ``*.cu`` here (with the shared ``dpf.cuh``) compiled with nvcc into one library.

The library is cached in a folder keyed by the sources' hash (``$MORPHOGEN_CUDA_CACHE``, default
``~/.cache/morphogen_exp/cuda``) and its handlers registered as XLA FFI targets on the CUDA platform
(``register``, on a kernel's first call). Each kernel's Python wrapper sits beside its source:
``bmma.py`` (bmma.cu, the bit-sliced engine's binary-MMA scan) and ``fused.py`` (fused.cu, the fused
engine's scan step). The sources are found beside this file (``Path(__file__)``), so an installed
package builds them too. Importing this package needs neither CUDA nor nvcc; building or calling a
kernel without them raises ``CudaUnavailable`` (one line).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import jax

__all__ = ["CudaUnavailable", "build", "find_nvcc", "find_tool", "register"]

HERE = Path(__file__).parent
SOURCES = tuple(sorted(HERE.glob("*.cu")))
HEADERS = tuple(sorted(HERE.glob("*.cuh")))
# FFI target name -> the handler symbol the library exports
TARGETS = {"morphogen_bmma_masked_xor": "MorphogenBmmaMaskedXor", "morphogen_expand_xor_fused": "MorphogenExpandXorFused",
           "morphogen_bmma_expand_xor": "MorphogenBmmaExpandXor",
           "morphogen_probe_stream_xor": "MorphogenProbeStreamXor"}
# the same handlers declared command-buffer compatible (XLA may capture them into a CUDA graph; cuda/capture.py)
TARGETS |= {"morphogen_bmma_masked_xor_graph": "MorphogenBmmaMaskedXorGraph",
            "morphogen_bmma_expand_xor_graph": "MorphogenBmmaExpandXorGraph",
            "morphogen_expand_xor_fused_graph": "MorphogenExpandXorFusedGraph"}
# Hopper's own target (HOPPER.md: the -gencode form); $MORPHOGEN_CUDA_ARCH overrides (e.g. sm_80).
DEFAULT_ARCH = "sm_90a"
_CUDA_HOMES = ("CUDA_HOME", "CUDA_PATH")  # environment variables naming a CUDA toolkit
_DEFAULT_CUDA_HOME = "/usr/local/cuda"
NVCC_FLAGS = ("-O3", "-std=c++17")  # shared with bench/sass.py, which compiles the same code to count its SASS
_DEFINE = re.compile(r"[A-Za-z_]\w*(=\S*)?")


class CudaUnavailable(RuntimeError):
    """The kernel cannot be built or run here (no nvcc, no CUDA backend, a failed build)."""


def find_tool(name: str, env: str, more: tuple[str, ...] = ()) -> str | None:
    """A CUDA toolkit program: the first executable of $``env``, PATH, $CUDA_HOME/bin, $CUDA_PATH/bin,
    /usr/local/cuda/bin, then ``more``; None when there is none."""
    cands = [os.environ.get(env), shutil.which(name)]
    cands += [str(Path(home) / "bin" / name) for home in (*(os.environ.get(v) for v in _CUDA_HOMES), _DEFAULT_CUDA_HOME) if home]
    return next((c for c in (*cands, *more) if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


def find_nvcc() -> str:
    """nvcc from $MORPHOGEN_NVCC, PATH, $CUDA_HOME/bin or /usr/local/cuda/bin (``find_tool``)."""
    nvcc = find_tool("nvcc", "MORPHOGEN_NVCC")
    if nvcc:
        return nvcc
    # pip's nvidia-cuda-nvcc-cu12 (what jax[cuda12] brings) holds ptxas and headers but no nvcc driver
    raise CudaUnavailable("nvcc not found: install the CUDA toolkit's compiler (apt install cuda-nvcc-12-x, or "
                          "conda install -c nvidia cuda-nvcc), "
                          "or set MORPHOGEN_NVCC to its path")


def _cache_dir() -> Path:
    env = os.environ.get("MORPHOGEN_CUDA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "morphogen_exp" / "cuda"


def _arch_flags(arch: str) -> list[str]:
    num = arch.removeprefix("sm_")
    return [f"-gencode=arch=compute_{num},code=sm_{num}"]


def cuda_defines(text: str) -> list[str]:
    """Space-separated NAME or NAME=VALUE (``$MORPHOGEN_CUDA_DEFINES``, e.g. MORPHOGEN_CHACHA_FMA=2) -> -D arguments."""
    bad = [d for d in text.split() if not _DEFINE.fullmatch(d)]
    if bad:
        raise CudaUnavailable(f"MORPHOGEN_CUDA_DEFINES: {bad[0]!r} is not NAME or NAME=VALUE (space-separated)")
    return text.split()


def build(force: bool = False) -> Path:
    """Compile the *.cu sources into one shared library (cached by sources, arch, JAX include dir and $MORPHOGEN_CUDA_DEFINES); its path."""
    arch = os.environ.get("MORPHOGEN_CUDA_ARCH", DEFAULT_ARCH)
    include = jax.ffi.include_dir()
    defines = cuda_defines(os.environ.get("MORPHOGEN_CUDA_DEFINES", ""))
    text = b"".join(f.name.encode() + f.read_bytes() for f in (*SOURCES, *HEADERS))
    digest = hashlib.sha256(text + f"{arch}|{include}|{jax.__version__}".encode()
                            + (f"|{' '.join(defines)}".encode() if defines else b"")).hexdigest()
    lib = _cache_dir() / digest[:16] / "libmorphogen_cuda.so"
    if lib.is_file() and not force:
        return lib
    nvcc = find_nvcc()
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    cmd = [nvcc, *NVCC_FLAGS, *(f"-D{d}" for d in defines), "-shared", "-Xcompiler", "-fPIC", *_arch_flags(arch),
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
