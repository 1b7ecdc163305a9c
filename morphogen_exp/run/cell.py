"""One cell of the matrix: config -> dataset -> queries -> strategy -> timings + answers -> parity -> MLflow.

`run(cfg, session, sweep)` is what the Hydra entry point calls and what tests call directly. A cell
always ends in a recorded state: FINISHED (ok, or "does not fit" with its estimate), FAILED with the
reason, or KILLED on Ctrl-C / SIGTERM; its outcome is the return value (a launcher carries it back).
`validate(cfg)` is every check that needs no device: the sweep runs it on every cell before any runs.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf

from .. import strategies
from ..config import ConfigError, RunConfig, digest, first_line, flatten, parse
from ..decide import rollout
from ..decide.decision import DecisionRules, estimate
from ..fields import PARENT_TAG, ROLE_TAG
from ..measure import datasets, devlock, devstate, floors, memory, parity, stats
from ..measure import placement as placements
from ..measure.queries import KEYS_PER_QUERY, make_queries
from ..measure.timing import Interleaved, SamplingPolicy, TimingSummary, measure_interleaved, time_limit
from ..pir import Engine, EngineSpec, available_engines, get, scan_bytes_read, tile_size
from ..pir.cuda import CudaUnavailable
from ..record.tracking import Tracker, cell_description, cell_run_name, code_version, shielded
from ..record.uiview import log_cell_metrics
from ..strategies.base import check_knobs
from .progress import Progress
from .session import Session, SweepRef

log = logging.getLogger(__name__)


@dataclass
class CellOutcome:
    status: str                      # ok | failed | does_not_fit | resumed | config_error | killed
    name: str = ""
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_tags() -> dict[str, str]:
    dev = jax.local_devices()[0]
    import jaxlib

    return {
        "device_kind": dev.device_kind,
        "backend": jax.default_backend(),
        "device_count": str(jax.local_device_count()),
        "jax_version": jax.__version__,
        "jaxlib_version": getattr(jaxlib, "__version__", "?"),
    }


def enable_compilation_cache(path: str | None) -> None:
    if path:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def validate(cfg: DictConfig) -> RunConfig:
    """Every check that needs no device and no store: types, ranges, names, the dataset file, the
    strategy's knobs and the decision rules. Raises ConfigError (one line)."""
    rc = parse(cfg, known_strategies=tuple(sorted(strategies.registered())), known_engines=tuple(available_engines()))
    try:
        engine = get(rc.engine.name)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if rc.placement.name not in engine.placements:
        raise ConfigError(f"engine={engine.name} runs with placement={' or '.join(sorted(engine.placements))} only, "
                          f"got placement={rc.placement.name}")
    datasets.plan_pages(rc.dataset)  # a bad dataset.path fails here, before any tracking or compiling
    check_knobs(rc.strategy.name, rc.strategy.knobs, rc.q)
    rules = DecisionRules.from_mapping(rc.decision)
    known = strategies.registered()
    unknown = [name for name in rules.prefer if name not in known]
    if unknown:  # a typo would silently never break a tie
        raise ConfigError(f"decision.prefer names no strategy {', '.join(map(repr, unknown))}; strategies: "
                          f"{', '.join(sorted(known))}")
    return rc


def config_from_params(params: Mapping[str, Any]) -> RunConfig:
    """A cell's validated RunConfig, rebuilt from its MLflow params (the resolved config, flattened)."""
    return validate(OmegaConf.create(rollout.tree(params)))


@dataclass
class Prepared:
    """One configuration ready to time on the resident database: its compiled paths and its queries."""

    rc: RunConfig
    spec: EngineSpec
    ds: datasets.Dataset
    ctx: Any
    path: Any                        # the strategy's batch path (strategies.base.BatchPath)
    qs: Any                          # the queries (queries.QuerySet)
    kb0: Any                         # server 0's key batch, on the device
    kb1: Any                         # server 1's
    scan_keys: int                   # keys of one scan of the batch path (one database pass)
    tile_pages: int                  # the batch path's scan step
    memory_need: int                 # estimated device bytes, with the batch path's working set
    database_bytes: int              # the engine's database (its layout, or the raw pages) on one device
    single_loop: Any = None
    engine: Engine | None = None

    def batch(self) -> jax.Array:
        return self.path.run(self.kb0)


def prepare(rc: RunConfig, session: Session, progress: Progress | None = None) -> Prepared:
    """Config -> dataset -> queries -> strategy: the database (built once per process), the compiled
    context and the strategy's batch path, the queries and the single-query loop. Raises DoesNotFit
    before anything is built when the database or the working set cannot fit."""
    spec = EngineSpec(rc.engine.name, rc.engine.tile_pages, rc.engine.unroll, mask_budget_mib=rc.engine.mask_budget_mib)
    num_pages = datasets.plan_pages(rc.dataset)
    domain_bits = datasets.domain_bits_for(num_pages)
    tile = functools.partial(tile_size, num_pages, domain_bits, spec)  # pages per scan step, by batch keys
    what = f"{rc.strategy.name} q={rc.q} on {rc.dataset.name}"
    builder = strategies.registered()[rc.strategy.name]

    plc = placements.resolve(rc.placement)  # more devices than exist: a setting to fix
    engine = get(spec.name)

    def fits(live_queries: int) -> int:  # per device: the engine's model of its share (shard or whole) and working set
        return placements.check_fits(what, engine, num_pages, (plc.name, len(plc.devices)), live_queries, tile,
                                     rc.bench.memory_cap_gib)

    fits(1)  # the database must fit before it is built (a 64 GiB one on a smaller card is "does not fit")
    if progress is not None:
        progress.phase("building data")
    ds = session.database(rc.dataset, rc.seed, engine.layout, None if plc.name == "single" else plc)  # built once
    ctx = session.context((spec, plc), lambda dataset, key: placements.new_context(dataset, *key))
    path = builder(rc.strategy.knobs, rc.q, ctx)
    need = fits(path.live_queries)

    qs = make_queries(ds.domain_bits, ds.num_pages, rc.seed, rc.q)
    kb0, kb1 = (jax.device_put(b) for b in qs.batches)
    singles0 = kb0.unstack()

    def single_loop() -> jax.Array:
        # The serving baseline: one query at a time, each answered (synced) before the next.
        return jnp.stack([jax.block_until_ready(ctx.single_jit(ds.words, kb)) for kb in singles0])

    scan_keys = KEYS_PER_QUERY * -(-rc.q // path.passes)
    db_bytes = engine.database_bytes(placements.device_pages(num_pages, plc.name, len(plc.devices)))
    return Prepared(rc, spec, ds, ctx, path, qs, kb0, kb1, scan_keys, tile(scan_keys), need, db_bytes, single_loop, engine)


def sampling_policy(b: Any) -> SamplingPolicy:
    return SamplingPolicy(warmup=b.warmup, min_samples=b.iterations, max_noise=b.max_noise, min_time_s=b.min_time_s,
                          max_time_s=b.max_time_s, confidence=b.confidence)


def compile_s(fn: Any) -> float:
    """The first (compiling) call of a path, timed apart from its samples."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def head_to_head(paths: Sequence[Callable[[], Any]], labels: Sequence[str], bench: Any,
                 watch: Sequence[int] = (0,)) -> Interleaved:
    """Paths on the resident database, head to head: each compiled once (timed apart), then timed in rounds
    (`timing.measure_interleaved`, stopping on the ratios to path 0 and the `watch`ed paths' own noise); every
    path's answers must be path 0's bit for bit (ParityError names the two)."""
    first = [compile_s(p) for p in paths]
    timed, outs = measure_interleaved(paths, policy=sampling_policy(bench), first_call_s=first, watch=watch)
    ref = np.asarray(outs[0])
    for label, out in zip(labels[1:], outs[1:], strict=True):
        if not np.array_equal(np.asarray(out), ref):
            raise parity.ParityError(f"{label}'s answers differ from {labels[0]}'s")
    return timed


def measure_cell(rc: RunConfig, session: Session, tracker: Tracker, run_id: str, progress: Progress) -> dict[str, float]:
    """Plan, measure, record: time the single-query loop and the strategy's batch path interleaved (one
    round = one sample of each, back to back), check parity, log everything."""
    plc = placements.resolve(rc.placement)
    tracker.log(run_id, tags=plc.tags())
    p = prepare(rc, session, progress)
    tracker.log(run_id, metrics={"memory_estimate_gib": p.memory_need / memory.GIB})

    progress.phase("compiling")  # both paths once, apart from the timed samples; the card's floors once per process
    single_compile_s, batch_compile_s = compile_s(p.single_loop), compile_s(p.batch)
    card = floors.for_cell(rc.bench.floors, plc.devices[0])
    b = rc.bench
    with devstate.watch() as watched, devstate.watch_host() as host:
        progress.phase("timing")  # single and batch interleaved
        timed, (single_out, batch_out) = measure_interleaved(
            [p.single_loop, p.batch], policy=sampling_policy(b), first_call_s=[single_compile_s, batch_compile_s], watch=(1,))
    single_t, batch_t = timed.paths

    progress.phase("parity")
    party1 = None
    if rc.parity.xor_check:
        party1 = np.stack([np.asarray(p.ctx.single_jit(p.ds.words, kb)) for kb in p.kb1.unstack()])
    rep = parity.check(rc.parity, p.ds, p.qs, np.asarray(single_out), np.asarray(batch_out), party1, session.oracle)

    progress.phase("logging")
    metrics, tags = cell_record(p, single_t, batch_t, rep, batch_compile_s, single_compile_s)
    engine = p.engine or get(p.spec.name)
    metrics |= floors.cell_record(card, batch_t, database_bytes=engine.database_bytes(p.ds.num_pages),
                                  blocks=floors.batch_blocks(rc.q, p.ds.num_pages, p.ds.domain_bits), devices=len(plc.devices))
    state_tags, state_metrics = devstate.split(devstate.snapshot())
    tags |= {"sampling.stopped_by": timed.stopped_by, **state_tags}
    metrics |= {**state_metrics, **{f"device.{k}": v for k, v in watched.changes.items()}, **host.metrics()}
    if host.moved():
        tags["host.load_moved"] = host.moved()
    log_cell_metrics(tracker, run_id, metrics, rc.q, tags=tags)
    tracker.log_series(run_id, "single_ms_iter", list(single_t.times_ms))
    tracker.log_series(run_id, "batch_ms_iter", list(batch_t.times_ms))
    tracker.log_text(run_id, json.dumps({"single": single_t.as_dict(), "batch": batch_t.as_dict(),
                                         "paired": "rounds of single then batch, alternating order"}, indent=1), "timings.json")
    if not rep.ok:
        raise parity.ParityError("; ".join(rep.failures))
    return metrics


def cell_record(p: Prepared, single_t: TimingSummary, batch_t: TimingSummary, rep: parity.ParityReport,
                batch_compile_s: float, single_compile_s: float) -> tuple[dict[str, float], dict[str, str]]:
    """The cell's metrics and tags: derived metrics with intervals, both paths' samples, parity, engine path."""
    rc, path = p.rc, p.path
    pass_gb = scan_bytes_read(p.ds.num_pages, p.spec, p.scan_keys, p.ds.domain_bits) / 1e9
    metrics = {
        "q": rc.q,
        **stats.cell_metrics(rc.q, single_t, batch_t, rc.bench.confidence),
        # database bytes actually read per second: one pass per scan (a batch makes path.passes, the loop q)
        "batch_effective_gbps": path.passes * pass_gb / (batch_t.p50_ms / 1e3),
        "single_effective_gbps": rc.q * pass_gb / (single_t.p50_ms / 1e3),
        "batch_passes": path.passes,
        "compile_s": batch_compile_s,
        "single_compile_s": single_compile_s,
        "layout_build_s": p.ds.layout_build_s,  # the engine's database layout, built once per database (0: raw pages)
        "database_gib": p.database_bytes / memory.GIB,  # that database on one device (the engine's model)
        "tile_pages": p.tile_pages,
        "scan_keys": p.scan_keys,
        "live_queries": path.live_queries,
        **single_t.as_metrics("single"),
        **batch_t.as_metrics("batch"),
        **rep.as_metrics(),
    }
    step_path = p.engine.step_path if p.engine is not None else None
    tags = {
        "checksum_single": rep.checksum_single,
        "checksum_batch": rep.checksum_batch,
        "answers_sha256": rep.sha256_batch,
        "parity_numpy_note": rep.numpy_note or "checked",
        # which database the engine scans: engines of one layout can serve from one resident copy
        "database_layout": "raw pages" if p.engine is None or p.engine.layout is None else f"{p.engine.name} layout",
        **{f"strategy_info.{k}": v for k, v in path.info.items()},
        **({} if step_path is None else {"engine_path.batch": step_path(p.scan_keys),
                                         "engine_path.single": step_path(KEYS_PER_QUERY)}),
        **{f"dataset.{k}": v for k, v in p.ds.describe().items()},
    }
    return metrics, {k: str(v) for k, v in tags.items()}


def identity_tags(rc: RunConfig) -> dict[str, str]:
    """What makes two cells the same measurement: config, code, dataset contents, device kind.
    `cell_key` includes q (resume); `config_id` does not (the configuration a rollout would ship).
    The dataset's fingerprint is its full contents (a file: sha256, cached by stat key), and is the one
    the cell measures: the session refuses a file that changed after this (datasets.expect_recorded)."""
    version = code_version()
    fp = datasets.fingerprint(rc.dataset, rc.seed)
    dev = device_tags()
    key = digest({"config": rc.identity(), "code": version, "dataset": fp, "device": dev["device_kind"]})
    return {"cell_key": key, "config_id": rc.config_id, "code_version": version, "git_commit": version.split("+")[0],
            "dataset.fingerprint": fp, **dev}


SAMPLE_SERIES = ("single_ms_iter", "batch_ms_iter")  # every timed sample of a cell, one step each


def _copy_samples(tracker: Tracker, src: str, dst: str) -> None:
    """A resumed cell keeps what its earlier run measured: every timed sample (the series, step by step) and the
    run's files (timings.json, config.yaml...)."""
    for key in SAMPLE_SERIES:
        history = sorted(tracker.client.get_metric_history(src, key), key=lambda m: m.step)
        if history:
            tracker.log_series(dst, key, [m.value for m in history])
    with tempfile.TemporaryDirectory() as tmp:
        for artifact in tracker.client.list_artifacts(src):
            local = tracker.client.download_artifacts(src, artifact.path, tmp)
            if artifact.is_dir:  # a folder (the dataset input's, say): its files under the same name
                tracker.client.log_artifacts(dst, local, artifact.path)
            else:
                tracker.log_file(dst, Path(local))


def _resume(rc: RunConfig, tracker: Tracker, ident: dict[str, str], sweep: SweepRef | None, name: str) -> CellOutcome | None:
    """The cell copied from an earlier sweep run of this same folder, if one finished it ok; else None (measure it).
    A run outside a sweep has nothing to resume from."""
    if sweep is None:
        log.info("resume: %s is not part of a sweep (-m): measured", name)
        return None
    prev = tracker.finished_cell(ident["cell_key"], sweep.sweep_dir, exclude_parent=sweep.parent_id)
    if prev is None:
        return None
    if rollout.legacy(prev.data.tags):  # its params cannot be shown to be the ones it ran with: a guard needs new ones
        log.info("resume: %s finished as run %s without a params digest (recorded before it existed): measured again",
                 name, prev.info.run_id)
        return None
    tags = {k: v for k, v in prev.data.tags.items() if not k.startswith(("mlflow.", "morphogen."))}
    tags.update(resumed_from=prev.info.run_id, **{ROLE_TAG: "cell", PARENT_TAG: sweep.sweep_dir})
    tags["mlflow.note.content"] = (prev.data.tags.get("mlflow.note.content", "") + f" (resumed from run {prev.info.run_id})").strip()
    run_id = tracker.start_run(prev.info.run_name or name, tags, sweep.parent_id)
    try:
        scalars = {k: v for k, v in prev.data.metrics.items() if k not in SAMPLE_SERIES}
        tracker.log(run_id, params=prev.data.params)
        log_cell_metrics(tracker, run_id, scalars, int(prev.data.tags.get("q", 0)))
        _copy_samples(tracker, prev.info.run_id, run_id)
    finally:
        tracker.end(run_id, "FINISHED")
    log.info("resume: %s already FINISHED as run %s; skipped", name, prev.info.run_id)
    return CellOutcome("resumed", name, run_id, dict(prev.data.metrics))


def run(cfg: DictConfig, session: Session, sweep: SweepRef | None = None) -> CellOutcome:
    """Run one cell. Raises ConfigError (before anything is recorded) for settings to fix."""
    rc = validate(cfg)
    placements.ensure_distributed(rc.placement)  # before the backend starts (multi-host)
    tracker = session.tracker(rc.mlflow)
    enable_compilation_cache(rc.bench.compilation_cache_dir)
    ident = identity_tags(rc)
    name = f"{rc.strategy.name}-q{rc.q}"
    # The runs table's name and description: the knobs (`tiled[tile=8]-q16`), where it ran, then its result.
    run_name = cell_run_name(rc.strategy.name, rc.q, rollout.guard_mapping(flatten(rc.resolved)).get("strategy", {}))
    where = f"{rc.dataset.name}/{rc.engine.name}, {ident.get('device_kind', '?')} ({ident.get('backend', '?')})"

    def note(status: str, metrics: Mapping[str, float] | None = None, error: str = "") -> dict[str, str]:
        return {"mlflow.note.content": cell_description(run_name, rc.q, where, status, metrics, error)}

    if rc.resume:
        done = _resume(rc, tracker, ident, sweep, name)
        if done:
            return done

    tags = {
        ROLE_TAG: "cell",
        "strategy": rc.strategy.name,
        "original_strategy": rc.strategy.original,
        "q": rc.q,
        "dataset": rc.dataset.name,
        "engine": rc.engine.name,
        "placement": rc.placement.name,
        **ident,
        **({PARENT_TAG: sweep.sweep_dir} if sweep else {}),
        rollout.PARAMS_DIGEST_TAG: rollout.params_digest(flatten(rc.resolved)),  # a guard is rebuilt from these alone
        **note("running"),
    }
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":  # a SLURM job: scancel and the time limit send SIGTERM
        signal.signal(signal.SIGTERM, _job_cancelled)
    run_id = tracker.start_run(run_name, tags, sweep.parent_id if sweep else None)
    t0 = time.perf_counter()
    try:  # from here on every way out ends the run
        tracker.log(run_id, params=flatten(rc.resolved))
        tracker.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        tracker.log_dataset(run_id, rc.dataset.name, ident["dataset.fingerprint"],
                            str(rc.dataset.path) if rc.dataset.path else f"synthetic(seed={rc.seed})",
                            {"num_pages": datasets.plan_pages(rc.dataset), "page_bytes": 4096})
        progress = session.progress(sweep)
        interval = rc.bench.system_metrics_s
        with devlock.hold(name, timeout_s=rc.bench.cell_timeout_s) as held:
            left, limit = _timeout_left(tracker, run_id, name, rc.bench.cell_timeout_s, held.waited_s)
            with progress.cell(sweep.index if sweep and sweep.index else 1, f"{name} on {rc.dataset.name}/{rc.engine.name}"), \
                    devstate.system_metrics(run_id, rc.mlflow.tracking_uri, sampling_interval_s=interval or 1.0, enabled=bool(interval)), \
                    time_limit(left, limit):
                metrics = measure_cell(rc, session, tracker, run_id, progress)
    except memory.DoesNotFit as err:
        tracker.log(run_id, tags={"cell_status": "does_not_fit", "error_message": str(err), **note("does_not_fit", error=str(err))},
                    metrics={"memory_estimate_gib": err.need / memory.GIB})
        tracker.end(run_id, "FINISHED")
        log.warning("%s: does not fit: %s", name, err)
        return CellOutcome("does_not_fit", name, run_id, error=str(err))
    except ConfigError as err:  # a value only the compiler can check: recorded, then reported as a setting to fix
        _end_failed(tracker, run_id, "ConfigError", str(err), note=note("failed", error=str(err)))
        raise
    except CudaUnavailable as err:  # the engine's CUDA kernels cannot be built or run here: the same for every cell
        _end_failed(tracker, run_id, "CudaUnavailable", str(err), note=note("failed", error=str(err)))
        raise ConfigError(f"engine={rc.engine.name}: {err}") from None
    except KeyboardInterrupt as err:
        with shielded():
            why = {"error_message": str(err)} if isinstance(err, JobCancelled) else {}
            tracker.log(run_id, tags={"cell_status": "killed", **why, **note("killed")})
            tracker.end(run_id, "KILLED")
        if isinstance(err, JobCancelled):  # the launcher gets the outcome; the other jobs and the report go on
            return CellOutcome("killed", name, run_id, error=str(err))
        raise
    except BaseException as err:
        msg = first_line(err, 500)
        _end_failed(tracker, run_id, type(err).__name__, msg, traceback.format_exc(),
                    note=note("failed", error=f"{type(err).__name__}: {msg}"))
        if not isinstance(err, Exception):
            raise
        log.error("%s FAILED: %s: %s", name, type(err).__name__, msg)
        return CellOutcome("failed", name, run_id, error=f"{type(err).__name__}: {msg}")
    tracker.log(run_id, tags={"cell_status": "ok", **note("ok", metrics)}, metrics={"wall_s": time.perf_counter() - t0, **held.metrics()})
    tracker.end(run_id, "FINISHED")
    log.info("%s", cell_line(name, metrics))
    return CellOutcome("ok", name, run_id, metrics)


def _timeout_left(tracker: Tracker, run_id: str, name: str, timeout_s: float | None,
                  waited_s: float) -> tuple[float | None, str]:
    """What is left of the cell's own timeout (bench.cell_timeout_s) after its wait for the device lock (the wait
    counts against it), and the limit as a CellTimeout names it. A wait of a second or more is said in the log and
    in the run's tags (device_lock_wait_s, cell_timeout_left_s), so a cell cut short by it says why."""
    left = None if timeout_s is None else max(float(timeout_s) - waited_s, 0.001)
    limit = "" if timeout_s is None else f"bench.cell_timeout_s={timeout_s:g}"
    if waited_s >= 1 and timeout_s is not None:
        limit += f", {waited_s:.0f} s of it waiting for the device lock"
    if waited_s >= 1:
        tags = {"device_lock_wait_s": f"{waited_s:.1f}", **({"cell_timeout_left_s": f"{left:.1f}"} if left is not None else {})}
        tracker.log(run_id, tags=tags)
        log.info("%s: waited %.0f s for the device lock%s", name, waited_s,
                 "" if left is None else f"; {left:.0f} s of bench.cell_timeout_s={timeout_s:g} left")
    return left, limit


def cell_line(name: str, metrics: Mapping[str, Any]) -> str:
    """An ok cell in one line: both paths' medians and the speedup with its interval (the speedup is the median of
    the rounds' ratios, so it need not be the ratio of the medians shown: the interval says how far it can be)."""
    sp = estimate(metrics, "batch_vs_single_speedup")
    speedup = "?" if sp is None else sp.format(".3g")
    return (f"{name}: single {metrics['single_ms_per_batch']:.3g} ms, batch {metrics['batch_ms_per_batch']:.3g} ms, "
            f"speedup x{speedup}, parity ok")


class JobCancelled(KeyboardInterrupt):
    """SIGTERM in a SLURM job (scancel, its time limit): the cell ends KILLED and its job returns that outcome."""


def _job_cancelled(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one clean-up: a second SIGTERM must not cut it short
    env = os.environ
    job = (f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}" if "SLURM_ARRAY_TASK_ID" in env
           else env.get("SLURM_JOB_ID", "?"))
    raise JobCancelled(f"SLURM job {job} was cancelled (SIGTERM); resume=true runs it again")


def _end_failed(tracker: Tracker, run_id: str, error_class: str, message: str, trace: str = "",
                note: Mapping[str, str] | None = None) -> None:
    """End a cell FAILED with its reason (and its description, `note`); a store that fails here too still gets the run ended."""
    with shielded():
        try:
            tracker.log(run_id, tags={"cell_status": "failed", "error_class": error_class, "error_message": message, **(note or {})})
            if trace:
                tracker.log_text(run_id, trace, "error.txt")
        finally:
            tracker.end(run_id, "FAILED")
