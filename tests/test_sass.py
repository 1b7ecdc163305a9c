"""bench/sass.py and the MORPHOGEN_CHACHA_FMA variant of dpf.cuh's ChaCha8, checked without a GPU: the kernels
compiled for sm_90a and their SASS counted per pipe (nvcc + nvdisasm), and the variant's arithmetic run as
host code against the numpy PRG. Skipped only where nvcc is absent; nvdisasm comes from PyPI
(nvidia-cuda-nvdisasm) when the toolkit lacks it."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pytest

from morphogen_exp.bench import sass
from morphogen_exp.bench.__main__ import main as bench_main
from morphogen_exp.pir import cuda
from morphogen_exp.pir.prg import chacha8_blocks

REPO = Path(__file__).resolve().parent.parent
HOST_CHECK = REPO / "tests" / "support" / "chacha_host_check.cu"
FMA = "MORPHOGEN_CHACHA_FMA=2"  # the rotation by 12 on the FMA pipe
SCAN_PIPE = "MORPHOGEN_SCAN_PIPE=1"  # bmma_scan loads chunk ci + 1 before chunk ci's MMAs
EXPAND_MINB2 = "MORPHOGEN_EXPAND_MINB=2"  # expand_to_bitvectors' registers sized for 2 blocks an SM, not 3


def _nvcc() -> str:
    try:
        return cuda.find_nvcc()
    except cuda.CudaUnavailable as e:
        pytest.skip(f"no nvcc on this machine: {e}")


@pytest.fixture(scope="module")
def bmma_mix(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[tuple[str, str], sass.KernelMix], Path]:
    """bmma.cu compiled once per variant (default, an explicit mask 0, the FMA variant, issue 31's scan and expansion
    variants): mixes by (variant, kernel)."""
    _nvcc()
    keep = tmp_path_factory.mktemp("sass")
    found = sass.measure({"default": [], "zero": ["MORPHOGEN_CHACHA_FMA=0"], "fma": [FMA], "scan_pipe": [SCAN_PIPE],
                          "minb2": [EXPAND_MINB2]},
                         sources=(cuda.HERE / "bmma.cu",), keep=keep)
    return {(m.variant, m.kernel): m for m in found}, keep


def test_pipe_table() -> None:
    ops = ("IMAD.IADD", "IMAD.HI.U32", "LOP3.LUT", "SHF.L.W.U32.HI", "VIADD", "ULOP3.LUT", "BMMA.168256.AND.POPC")
    assert [sass.pipe_of(op) for op in ops] == ["fma", "fma", "alu", "alu", "undocumented", "uniform", "tensor"]


def test_blocks_end_at_labels_and_branches_and_the_chacha_block_is_the_largest_marked() -> None:
    text = """//--------------------- .text._Z1kv --------------------------
        /*0000*/                   IADD3 R1, R1, 0x61707865, RZ ;
        /*0010*/               @P0 BRA `(.L_x_1) ;
        /*0020*/                   IMAD.IADD R2, R2, 0x1, R3 ;
        /*0030*/                   SHF.L.W.U32.HI R2, R2, 0x10, R2 ;
.L_x_1:
        /*0040*/                   LOP3.LUT R4, R4, 0x61707865, RZ, 0x3c, !PT ;
        /*0050*/                   IMAD.IADD R4, R4, 0x1, R4 ;
        /*0060*/                   EXIT ;
"""
    blocks = sass.parse_sass(text)["_Z1kv"]
    assert [len(b) for b in blocks] == [2, 2, 3]
    (mix,) = sass.mixes(text, "k.cu", "default")
    assert mix.chacha_blocks == 2  # the first and last blocks hold the marker; the largest of them is counted
    assert mix.chacha == {"LOP3.LUT": 1, "IMAD.IADD": 1, "EXIT": 1}
    assert mix.pipes()["alu"] == 3 and mix.pipes()["fma"] == 2


def test_default_build_counts_the_expansion_kernels(bmma_mix: tuple[dict[tuple[str, str], sass.KernelMix], Path]) -> None:
    mixes, _ = bmma_mix
    for kernel in ("expand_to_bitvectors", "expand_scan_pipelined"):
        m = mixes["default", kernel]
        assert m.chacha_blocks >= 1
        block = m.pipes("chacha")
        # one node's pair of ChaCha8 blocks: ~250 XORs (LOP3) and ~230 rotations (funnel shifts), all on the ALU pipe
        assert m.chacha["SHF.L.W.U32.HI"] > 150 and block["alu"] > 2 * block["fma"] > 0
        assert sum(m.opcodes.values()) > sum(m.chacha.values()) > 600
    assert mixes["default", "bmma_scan<4>"].chacha_blocks == 0


def test_mask_zero_is_the_default_build(bmma_mix: tuple[dict[tuple[str, str], sass.KernelMix], Path]) -> None:
    _, keep = bmma_mix
    assert sass.normalized((keep / "bmma.default.sass").read_text()) == sass.normalized((keep / "bmma.zero.sass").read_text())


def test_issue31_variants_fit_their_occupancy_without_spills(
        bmma_mix: tuple[dict[tuple[str, str], sass.KernelMix], Path]) -> None:
    """The variants the next device session times (scripts/profile_bitsliced.sh) change only their own kernel, and
    fit the blocks an SM they are launched for with no spills: 2 blocks of 256 threads (<= 128 registers)."""
    mixes, _ = bmma_mix
    for kg in range(1, 5):  # the double-buffered scan: every key group still fits 2 blocks an SM, no local memory
        m = mixes["scan_pipe", f"bmma_scan<{kg}>"]
        assert m.registers <= 128 and (m.spill_stores, m.spill_loads) == (0, 0), (kg, m.registers)
        assert "BMMA.168256.AND.POPC" in m.opcodes
        assert mixes["scan_pipe", f"bmma_scan<{kg}>"].opcodes != mixes["default", f"bmma_scan<{kg}>"].opcodes
    assert mixes["scan_pipe", "expand_to_bitvectors"].opcodes == mixes["default", "expand_to_bitvectors"].opcodes
    wide, narrow = mixes["minb2", "expand_to_bitvectors"], mixes["default", "expand_to_bitvectors"]
    assert narrow.registers <= 80 < wide.registers <= 128  # 3 blocks an SM today; 2 lets ptxas drop the spills
    assert (wide.spill_stores, wide.spill_loads) == (0, 0) and (narrow.spill_stores, narrow.spill_loads) != (0, 0)
    assert mixes["minb2", "bmma_scan<4>"].opcodes == mixes["default", "bmma_scan<4>"].opcodes


def test_fma_variant_moves_alu_work_to_the_fma_pipe(bmma_mix: tuple[dict[tuple[str, str], sass.KernelMix], Path]) -> None:
    mixes, _ = bmma_mix
    for kernel in ("expand_to_bitvectors", "expand_scan_pipelined"):
        old, new = mixes["default", kernel], mixes["fma", kernel]
        for region in ("chacha", "kernel"):
            before, after = old.pipes(region), new.pipes(region)
            assert after["alu"] < before["alu"] and after["fma"] > before["fma"], (kernel, region, before, after)
        assert "IMAD.HI.U32" in new.chacha and "IMAD.HI.U32" not in old.chacha  # not folded back into a shift
        # the pair's busiest pipe shrinks by over 10% while its instruction count grows by under 15%
        assert max(new.pipes("chacha")["alu"], new.pipes("chacha")["fma"]) < 0.9 * old.pipes("chacha")["alu"]
        assert sum(new.chacha.values()) < 1.15 * sum(old.chacha.values())
        # the same registers and spills: the same blocks an SM (the kernels' __launch_bounds__ occupancy)
        assert (new.registers, new.spill_stores, new.spill_loads) == (old.registers, old.spill_stores, old.spill_loads)
        assert 0 < old.registers <= 255
    assert mixes["default", "bmma_scan<4>"].opcodes == mixes["fma", "bmma_scan<4>"].opcodes  # no ChaCha8 there


def test_every_mask_computes_chacha8_on_the_host(tmp_path: Path) -> None:
    exe = tmp_path / "chacha_host_check"
    subprocess.run([_nvcc(), "-std=c++17", "-DMORPHOGEN_DPF_HOST", f"-I{cuda.HERE}", str(HOST_CHECK), "-o", str(exe)],
                   check=True, capture_output=True)
    seeds = np.random.default_rng().integers(0, 2**32, (4096, 4), dtype=np.uint32)
    out = subprocess.run([str(exe)], input=seeds.astype("<u4").tobytes(), capture_output=True, check=True).stdout
    got = np.frombuffer(out, dtype="<u4").reshape(16, len(seeds), 10)
    b0, b1 = chacha8_blocks(seeds)
    want = np.concatenate([b0[:, :8], b1[:, :2]], axis=1)
    for mask in range(16):
        np.testing.assert_array_equal(got[mask], want, err_msg=f"MORPHOGEN_CHACHA_FMA={mask}")


def test_cli_bad_define_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["sass", "--define", "MORPHOGEN_CHACHA_FMA=2 -O0"]) == 2  # nothing compiled: checked first
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'-O0' is not NAME or NAME=VALUE" in err


def test_build_passes_defines_and_keys_the_cache_on_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """build()'s nvcc command and cache folder with and without $MORPHOGEN_CUDA_DEFINES (nvcc itself not run)."""
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "stopped by the test")

    monkeypatch.setattr(cuda, "find_nvcc", lambda: "nvcc")
    monkeypatch.setattr(cuda.subprocess, "run", fake_run)
    monkeypatch.setenv("MORPHOGEN_CUDA_CACHE", str(tmp_path))
    monkeypatch.delenv("MORPHOGEN_CUDA_DEFINES", raising=False)
    for defines in (None, f" {FMA} "):
        if defines is not None:
            monkeypatch.setenv("MORPHOGEN_CUDA_DEFINES", defines)
        with pytest.raises(cuda.CudaUnavailable, match="nvcc failed"):
            cuda.build()
    plain, fma = seen
    assert not any(a.startswith("-D") for a in plain)
    assert [a for a in fma if a.startswith("-D")] == [f"-D{FMA}"]
    assert [a for a in fma if not a.startswith("-D")] != plain  # the output path: a cache folder of its own
    assert plain[plain.index("-o") + 1].split("/")[-2] != fma[fma.index("-o") + 1].split("/")[-2]
    monkeypatch.setenv("MORPHOGEN_CUDA_DEFINES", "A=1 ;rm")
    with pytest.raises(cuda.CudaUnavailable, match="';rm' is not NAME"):
        cuda.build()


def test_cli_writes_the_pipe_and_opcode_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _nvcc()
    assert bench_main(["sass", "--sources", "fused", "--out", str(tmp_path)]) == 0
    assert "expand_xor_fused<4>" in capsys.readouterr().out
    pipes = list(csv.DictReader((tmp_path / "sass_pipes.csv").open()))
    block = [r for r in pipes if r["kernel"] == "expand_xor_fused<4>" and r["region"] == "chacha8_block"]
    assert len(block) == 1 and int(block[0]["alu"]) > int(block[0]["fma"]) > 0 and int(block[0]["registers"]) > 0
    opcodes = list(csv.DictReader((tmp_path / "sass_opcodes.csv").open()))
    assert {r["pipe"] for r in opcodes if r["opcode"].startswith("LOP3")} == {"alu"}
    assert not list(tmp_path.glob("*.sass"))  # the SASS text only with --sass
