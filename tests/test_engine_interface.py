"""A fifth engine added in one module (tests/support/tiny_engine.py, docs/engine-interface.md): registered as an
object, it is what the scan calls, what a real cell runs (exact against the numpy reference), and the cell's
placement check and memory estimate come from the object, never from its name."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from morphogen_exp import pir
from morphogen_exp.config import ConfigError
from morphogen_exp.measure import memory
from morphogen_exp.pir import EngineSpec, answer_jax, answer_numpy, generate_keys
from morphogen_exp.run import cell as app

from .conftest import mlflow_runs
from .support import tiny_engine


@pytest.fixture
def tiny():
    engine = pir.register(tiny_engine.ENGINE)
    tiny_engine.STEPS.clear()
    yield engine
    pir.unregister("tiny")  # other tests see only the package's engines


def test_a_registered_engine_is_what_get_and_the_scan_use(tiny) -> None:
    assert pir.get("tiny") is tiny and "tiny" in pir.available_engines()
    rng = np.random.default_rng(21)
    pages = rng.integers(0, 256, size=(300, 4096), dtype=np.uint8)
    keys = [generate_keys(9, int(t), rng)[int(t) % 2] for t in (0, 150, 299)]
    np.testing.assert_array_equal(answer_jax(pages, keys, EngineSpec("tiny", tile_pages=128, unroll=False)),
                                  answer_numpy(pages, keys))
    assert tiny_engine.STEPS == [3, 3]  # its fused step traced: the tile loop's body and the 44-page tail


def test_a_real_cell_runs_the_engine_exactly_with_its_own_path_and_memory_model(tiny, make_cfg, workdir, sess) -> None:
    out = app.run(make_cfg("engine.name=tiny", "q=2", "strategy=full_batch"), sess)
    assert out.status == "ok", out.error
    (run,) = mlflow_runs(workdir)
    m, tags = run.data.metrics, run.data.tags
    assert tags["engine"] == "tiny" and tiny_engine.STEPS
    assert m["parity_ok"] == 1 and m["parity_numpy_eq"] == 1 and m["parity_xor_eq"] == 1
    assert tags["engine_path.batch"] == tags["engine_path.single"] == tiny_engine.PATH
    # the recorded estimate is the engine's model: its fixed GiB of scratch on top of the stored masks
    assert m["memory_estimate_gib"] * memory.GIB > 1 << 30


def test_the_engines_placements_and_memory_model_decide(tiny, make_cfg, sess) -> None:
    with pytest.raises(ConfigError, match="engine=tiny runs with placement=single only"):
        app.validate(make_cfg("engine.name=tiny", "placement=sharded"))
    out = app.run(make_cfg("engine.name=tiny", "q=1", "bench.memory_cap_gib=0.5"), sess)
    assert out.status == "does_not_fit"  # a tiny database, but the engine's own 1 GiB of scratch does not fit 0.5 GiB
    assert tiny.device_bytes(300, 3, lambda k: 128) == 300 * 4096 + tiny_engine.working_set_bytes(3, lambda k: 128)


def test_no_function_in_pir_takes_more_than_six_positional_parameters() -> None:
    """Long positional signatures are where a swapped argument is a silent wrong answer: pytrees instead."""
    root = Path(pir.__file__).parent
    long = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                positional = len(node.args.posonlyargs) + len(node.args.args)
                if positional > 6:
                    long.append(f"{path.relative_to(root)}:{node.lineno} {getattr(node, 'name', 'lambda')} ({positional})")
    assert len(list(root.rglob("*.py"))) > 20 and not long, long
