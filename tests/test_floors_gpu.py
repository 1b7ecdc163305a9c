"""The floors' probes on a GPU (skipped elsewhere; a device session runs ``pytest tests/test_floors_gpu.py`` in one
call): the stream kernel reads every word, the probes give positive rates once per device, and real bitsliced cells
on a small database (the engine's own kernels) stay within both floors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from morphogen_exp.measure import floors
from morphogen_exp.pir.cuda.probe import stream_xor, stream_xor_reference
from morphogen_exp.run import cell as app

from .conftest import mlflow_runs

GPU = jax.default_backend() == "gpu"
pytestmark = pytest.mark.skipif(not GPU, reason="the floors' probes are CUDA kernels: run on a GPU")


@pytest.mark.parametrize("shape", [(4,), (3, 1024), (257, 1024), (1 << 16, 1024), (5, 36)])
def test_the_stream_kernel_xors_every_word(shape: tuple[int, ...]) -> None:
    """One block or a full grid, a buffer smaller than the grid or many times it, a ragged last step."""
    words = jnp.asarray(np.random.default_rng(sum(shape)).integers(0, 2**32, size=shape, dtype=np.uint32))
    np.testing.assert_array_equal(np.asarray(jax.jit(stream_xor)(words)), np.asarray(stream_xor_reference(words)))
    with pytest.raises(ValueError, match="multiple of 4"):
        stream_xor(jnp.zeros((6,), jnp.uint32))


def test_the_probes_give_positive_rates_once_per_device() -> None:
    device = jax.local_devices()[0]
    card = floors.probe(device)
    rates = (card.stream_gbps, card.scan_gbps, card.expand_blocks_per_s)
    assert all(math.isfinite(r) and r > 0 for r in rates), card
    assert card.read_gbps == max(card.stream_gbps, card.scan_gbps) and card.read_rows >= floors.ProbeShape().min_rows
    assert floors.probe(device) is card and floors.for_cell("auto", device) is card  # cached: one probe per process


@pytest.mark.parametrize("q", [1, 32])
def test_a_bitsliced_cell_stays_within_both_floors(q: int, make_cfg, workdir, sess) -> None:
    """A floor is an upper bound: the engine's own cell (exact answers) never beats it, even at its interval's end."""
    out = app.run(make_cfg("engine=bitsliced", "dataset=small", f"q={q}", "bench.floors=true"), sess)
    assert out.status == "ok", out.error
    (run,) = mlflow_runs(workdir)
    m = run.data.metrics
    for frac in (floors.READ_FRAC, floors.EXPAND_FRAC):
        assert 0 < m[f"{frac}_lo"] <= m[frac] <= m[f"{frac}_hi"], (frac, m)
        assert m[frac] <= 1.0, f"q={q}: {frac} {m[frac]:.1%} of the floor (read floor {m[floors.READ]:.0f} GB/s, " \
                               f"expansion {m[floors.EXPAND]:.3g} blocks/s)"
