"""Static instruction mix of the CUDA kernels, per pipe: no GPU, only nvcc and a disassembler.

    python -m morphogen_exp.bench sass                                      # the default build
    python -m morphogen_exp.bench sass --define MORPHOGEN_CHACHA_FMA=2 --out DIR  # default and one variant
    python -m morphogen_exp.bench sass --sources bmma --define X=1 --define "X=2 Y" # two variants, bmma.cu only

Each ``pir/cuda/*.cu`` (with ``dpf.cuh``) is compiled to a cubin with the flags of ``pir.cuda.build`` (arch
``$MORPHOGEN_CUDA_ARCH`` or sm_90a), once per variant (the default, then one per ``--define``, whose value
may hold several space-separated NAME or NAME=VALUE), and disassembled with nvdisasm (the CUDA toolkit's, or
PyPI's nvidia-cuda-nvdisasm). Per kernel it counts the SASS instructions by opcode and by pipe (``PIPES``),
over the whole kernel and over one node's ChaCha8 pair: the largest basic block that loads ChaCha's first
constant (0x61707865), the unrolled rounds of ``dpf::expand_node``. Counts are static (each instruction once,
however often it runs); the ChaCha8 block is what the expansion kernels spend their issue slots on.
"""

from __future__ import annotations

import argparse
import collections
import csv
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..pir.cuda import DEFAULT_ARCH, HERE, NVCC_FLAGS, SOURCES, CudaUnavailable, _arch_flags, cuda_defines, find_nvcc, find_tool

__all__ = ["PIPES", "KernelMix", "add_parser", "disassemble", "find_nvdisasm", "main", "measure", "parse_sass", "pipe_of"]

# Opcode (before its first '.') -> pipe. ALU and FMA as Nsight Compute names the pipes of sm_70 and later: the
# ALU pipe runs bit manipulation, logic and integer adds/compares; the FMA pipe FP32 arithmetic and the
# integer multiply-adds (IMAD in all its forms: IMAD.IADD is an add, IMAD.SHL a shift, IMAD.MOV a move; IMAD.HI
# and IMAD.WIDE also write the high word). Each runs one warp instruction every two cycles an SM sub-partition.
# VIADD and friends (new on sm_90) have no documented pipe: counted apart, never in ALU or FMA.
PIPES: dict[str, str] = {
    **dict.fromkeys(("IADD3", "LOP3", "SHF", "LEA", "ISETP", "SEL", "PRMT", "IMNMX", "PLOP3", "BMSK", "SGXT", "FLO",
                     "BREV", "IABS", "LOP", "FSEL", "FSETP", "FMNMX", "P2R", "R2P", "ICMP"), "alu"),
    **dict.fromkeys(("IMAD", "IMUL", "FFMA", "FMUL", "FADD", "IDP"), "fma"),
    **dict.fromkeys(("VIADD", "VIMNMX", "VIADDMNMX", "VIMNMX3", "VIADD3"), "undocumented"),
    **dict.fromkeys(("BMMA", "HMMA", "IMMA", "HGMMA", "IGMMA", "QGMMA", "BGMMA"), "tensor"),
    **dict.fromkeys(("LDG", "STG", "LDS", "STS", "LDL", "STL", "LD", "ST", "LDC", "ATOM", "ATOMS", "ATOMG", "RED",
                     "SHFL", "LDSM", "STSM", "LDGSTS", "LDGDEPBAR", "MEMBAR", "CCTL", "UBLKCP", "UTMALDG", "SYNCS"),
                    "memory"),
    **dict.fromkeys(("BRA", "BRX", "EXIT", "RET", "CALL", "BAR", "BSSY", "BSYNC", "WARPSYNC", "NOP", "YIELD", "BPT",
                     "DEPBAR", "ELECT", "VOTE", "S2R", "CS2R", "S2UR", "MOV"), "control/move"),
}
PIPE_COLUMNS = ("alu", "fma", "undocumented", "uniform", "tensor", "memory", "control/move", "other")
CHACHA_MARK = "0x61707865"  # ChaCha's first constant ("expa"): present in, and only in, the unrolled rounds
_ENDS_BLOCK = ("BRA", "BRX", "EXIT", "RET", "BSYNC", "BAR", "WARPSYNC", "CALL")
_INSTR = re.compile(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_FUNC = re.compile(r"^//-+ \.text\.(\S+) -+$", re.M)
_PTXAS = re.compile(r"Function properties for (\S+)\s+\d+ bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
                    r"\s+ptxas info\s+: Used (\d+) registers")
_ANON = re.compile(r"_GLOBAL__N__[0-9a-f]+_")  # the anonymous namespace's per-path hash: not part of the code


def pipe_of(opcode: str) -> str:
    """The pipe of one SASS opcode (``PIPES``; uniform-datapath U* opcodes 'uniform'; the rest 'other')."""
    base = opcode.split(".")[0]
    if base in PIPES:
        return PIPES[base]
    if base.startswith("U") and base[1:] in PIPES:
        return "uniform"
    return "other"


@dataclass
class KernelMix:
    """One kernel's static instruction counts: whole kernel and the ChaCha8 block (empty if it has none)."""

    source: str
    kernel: str
    variant: str
    opcodes: collections.Counter[str] = field(default_factory=collections.Counter)
    chacha: collections.Counter[str] = field(default_factory=collections.Counter)
    chacha_blocks: int = 0  # basic blocks with ChaCha8 rounds (one per inlined expand_node)
    registers: int = 0  # ptxas's report: registers a thread, bytes spilled to local memory
    spill_stores: int = 0
    spill_loads: int = 0

    def pipes(self, region: str = "kernel") -> dict[str, int]:
        """Counts per pipe (``PIPE_COLUMNS``) of the whole kernel or of its ChaCha8 block."""
        out = dict.fromkeys(PIPE_COLUMNS, 0)
        for op, n in (self.opcodes if region == "kernel" else self.chacha).items():
            out[pipe_of(op)] += n
        return out


def find_nvdisasm() -> str:
    """nvdisasm from $MORPHOGEN_NVDISASM, PATH, beside nvcc's toolkit, or PyPI's nvidia-cuda-nvdisasm."""
    spec = importlib.util.find_spec("nvidia")  # the wheel puts it in the nvidia namespace package: nvidia/cu*/bin
    roots = (spec.submodule_search_locations or []) if spec else []
    wheel = [str(p) for root in roots for p in sorted(Path(root).glob("*/bin/nvdisasm"))]
    found = find_tool("nvdisasm", "MORPHOGEN_NVDISASM", tuple(wheel))
    if found:
        return found
    raise CudaUnavailable("nvdisasm not found: pip install nvidia-cuda-nvdisasm (or the CUDA toolkit), "
                          "or set MORPHOGEN_NVDISASM to its path")


def compile_cubin(source: Path, out: Path, defines: list[str], arch: str) -> dict[str, tuple[int, int, int]]:
    """One .cu compiled to the cubin `out` for `arch` with build()'s flags and `defines` (nvcc's errors as
    CudaUnavailable); ptxas's report per mangled kernel: (registers, spill store bytes, spill load bytes)."""
    import jax  # only for the FFI headers' folder, as build() does

    cmd = [find_nvcc(), *NVCC_FLAGS, *(f"-D{d}" for d in defines), "-cubin", "-Xptxas", "-v", *_arch_flags(arch),
           f"-I{jax.ffi.include_dir()}", f"-I{HERE}", str(source), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        errors = [ln for ln in res.stderr.splitlines() if "error" in ln] or res.stderr.splitlines()[-1:]
        raise CudaUnavailable(f"nvcc failed on {source.name} with {defines or 'no defines'}: "
                              f"{errors[0] if errors else res.returncode}")
    return {m.group(1): (int(m.group(4)), int(m.group(2)), int(m.group(3))) for m in _PTXAS.finditer(res.stderr)}


def disassemble(cubin: Path) -> str:
    """The cubin's SASS as nvdisasm prints it (one .text section per kernel, basic blocks labelled)."""
    res = subprocess.run([find_nvdisasm(), "-c", str(cubin)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise CudaUnavailable(f"nvdisasm failed on {cubin.name}: {res.stderr.strip()[:200]}")
    return res.stdout


def kernel_name(mangled: str) -> str:
    """A readable kernel name: c++filt's, less the arguments and the anonymous namespace (the mangled name without c++filt)."""
    exe = shutil.which("c++filt")
    if exe is None:
        return mangled
    name = subprocess.run([exe, mangled], capture_output=True, text=True, check=False).stdout.strip() or mangled
    return name.replace("(anonymous namespace)::", "").split("(")[0].removeprefix("void ")


def parse_sass(text: str) -> dict[str, list[list[str]]]:
    """nvdisasm text -> {mangled kernel: basic blocks, each the list of its instructions (opcode + operands)}.

    A block ends at a label (a branch target) and after a branch, exit, barrier or reconvergence point."""
    kernels: dict[str, list[list[str]]] = {}
    heads = list(_FUNC.finditer(text))
    for i, m in enumerate(heads):
        body = text[m.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        blocks: list[list[str]] = [[]]
        for line in body.splitlines():
            s = line.strip()
            if re.match(r"\.L_x_\d+:", s):
                blocks.append([])
                continue
            ins = _INSTR.match(s)
            if ins is None:
                continue
            blocks[-1].append(ins.group(1) + ins.group(2))
            if ins.group(1).split(".")[0] in _ENDS_BLOCK:
                blocks.append([])
        kernels[m.group(1)] = [b for b in blocks if b]
    return kernels


def mixes(text: str, source: str, variant: str, resources: dict[str, tuple[int, int, int]] | None = None) -> list[KernelMix]:
    """Per kernel of one disassembled cubin: opcode counts, whole and in its largest ChaCha8 block (and
    registers and spills where ptxas's report `resources` names the kernel)."""
    out = []
    for mangled, blocks in parse_sass(text).items():
        regs, stores, loads = (resources or {}).get(mangled, (0, 0, 0))
        mix = KernelMix(source, kernel_name(mangled), variant, registers=regs, spill_stores=stores, spill_loads=loads)
        mix.opcodes.update(ins.split()[0] for b in blocks for ins in b)
        rounds = [b for b in blocks if any(CHACHA_MARK in ins for ins in b)]
        mix.chacha_blocks = len(rounds)
        if rounds:
            mix.chacha.update(ins.split()[0] for ins in max(rounds, key=len))
        out.append(mix)
    return sorted(out, key=lambda m: (m.source, m.kernel))


def normalized(text: str) -> str:
    """SASS text without the anonymous namespace's per-path hash: equal for the same code from two folders."""
    return _ANON.sub("_GLOBAL__N__", text)


def measure(variants: dict[str, list[str]], sources: tuple[Path, ...] = SOURCES, arch: str | None = None,
            keep: Path | None = None) -> list[KernelMix]:
    """Compile and count every source under every variant (label -> defines); SASS kept under `keep` if given."""
    arch = arch or os.environ.get("MORPHOGEN_CUDA_ARCH", DEFAULT_ARCH)
    rows: list[KernelMix] = []
    with tempfile.TemporaryDirectory(prefix="morphogen-sass-") as tmp:
        for label, defines in variants.items():
            for src in sources:
                cubin = Path(tmp) / f"{src.stem}.cubin"
                resources = compile_cubin(src, cubin, defines, arch)
                text = disassemble(cubin)
                if keep is not None:
                    (keep / f"{src.stem}.{_slug(label)}.sass").write_text(text)
                rows += mixes(text, src.name, label, resources)
    return rows


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)


def pipe_rows(mixes_: list[KernelMix]) -> list[dict[str, object]]:
    """One row per variant, kernel and region (kernel / chacha8_block): counts per pipe and in all."""
    rows: list[dict[str, object]] = []
    for m in mixes_:
        for region in ("kernel", "chacha8_block"):
            if region == "chacha8_block" and not m.chacha:
                continue
            p = m.pipes("kernel" if region == "kernel" else "chacha")
            rows.append(dict(variant=m.variant, source=m.source, kernel=m.kernel, region=region,
                             total=sum(p.values()), **p, chacha8_blocks=m.chacha_blocks, registers=m.registers,
                             spill_stores=m.spill_stores, spill_loads=m.spill_loads))
    return rows


def opcode_rows(mixes_: list[KernelMix]) -> list[dict[str, object]]:
    """One row per variant, kernel, region and opcode, with its pipe."""
    return [dict(variant=m.variant, source=m.source, kernel=m.kernel, region=region, opcode=op, pipe=pipe_of(op), count=n)
            for m in mixes_ for region, counts in (("kernel", m.opcodes), ("chacha8_block", m.chacha))
            for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def table(rows: list[dict[str, object]]) -> str:
    """The pipe rows as an aligned text table, ALU:FMA ratio last."""
    head = ("variant", "kernel", "region", "total", "alu", "fma", "undocumented", "other")
    lines = [f"{head[0]:<24} {head[1]:<26} {head[2]:<14}" + "".join(f"{h:>8}" for h in head[3:6]) + f"{head[6]:>13}"
             + f"{head[7]:>8}  alu/fma  regs spill(st/ld B)"]
    for r in rows:
        other = sum(int(str(r[c])) for c in PIPE_COLUMNS if c not in ("alu", "fma", "undocumented"))
        alu, fma = int(str(r["alu"])), int(str(r["fma"]))
        lines.append(f"{str(r['variant'])[:24]:<24} {str(r['kernel'])[:26]:<26} {str(r['region']):<14}"
                     + "".join(f"{v:>8}" for v in (r["total"], alu, fma)) + f"{r['undocumented']:>13}{other:>8}"
                     + f"  {alu / fma if fma else float('inf'):7.2f}  {r['registers']:>4} {r['spill_stores']}/{r['spill_loads']}")
    return "\n".join(lines)


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `sass` subcommand of ``python -m morphogen_exp.bench``."""
    s = sub.add_parser("sass", help="static SASS instruction mix per kernel and pipe (nvcc + nvdisasm, no GPU)")
    s.add_argument("--define", action="append", default=[], metavar="'NAME[=VALUE] ...'",
                   help="one variant's defines (space-separated), compiled beside the default; repeat for more variants")
    s.add_argument("--arch", default=None, help=f"target (default $MORPHOGEN_CUDA_ARCH or {DEFAULT_ARCH})")
    s.add_argument("--sources", default=None, help="comma-separated .cu stems (default: all of pir/cuda, e.g. bmma,fused)")
    s.add_argument("--out", default=None, help="folder for sass_pipes.csv and sass_opcodes.csv")
    s.add_argument("--sass", action="store_true", help="also keep each cubin's SASS text in --out (about 1.5 MB a source)")


def main(args: argparse.Namespace) -> int:
    """Run the `sass` subcommand; a setting to fix or a missing tool is one line on stderr, exit 2."""
    try:
        variants: dict[str, list[str]] = {"default": []} | {d.strip(): cuda_defines(d) for d in args.define}
        if any(not defs for defs in list(variants.values())[1:]):
            raise CudaUnavailable("--define needs at least one NAME or NAME=VALUE")
        by_stem = {src.stem: src for src in SOURCES}
        stems = args.sources.split(",") if args.sources else list(by_stem)
        if unknown := [s for s in stems if s not in by_stem]:
            raise CudaUnavailable(f"--sources: no {unknown[0]}.cu in {HERE} (have: {', '.join(by_stem)})")
        if args.sass and not args.out:
            raise CudaUnavailable("--sass needs --out (the folder for the SASS text)")
        out = Path(args.out) if args.out else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        found = measure(variants, tuple(by_stem[s] for s in stems), arch=args.arch, keep=out if args.sass else None)
    except (CudaUnavailable, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = pipe_rows(found)
    print(table(rows))
    if out is not None:
        _write(out / "sass_pipes.csv", rows)
        _write(out / "sass_opcodes.csv", opcode_rows(found))
        print(f"wrote {out / 'sass_pipes.csv'} and {out / 'sass_opcodes.csv'}" + (" and the SASS text" if args.sass else ""))
    return 0
