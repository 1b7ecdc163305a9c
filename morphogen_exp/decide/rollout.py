"""The rollout guard store: one guard per (dataset, device kind, engine), loaded with `+rollout=NAME`.

Guards live in `<root>/rollout/<name>.yaml`, root = $MORPHOGEN_ROLLOUT_DIR or `<checkout>/outputs` whatever the current
directory (installed from a wheel: `./outputs`); conf/config.yaml puts the root on Hydra's search path through the
`morphogen_rollout_root` resolver. `selected` is a copy of the latest guard written. A guard is real
YAML written from typed values, so every knob (lists, booleans, null, ints) loads back as it was.

Beside each `<name>.yaml` is `<name>.meta.json` (`GuardMeta`): the sweep behind the guard (folder, run, store,
code, device kind, dataset, engine, the configurations it ships and falls back to, the q values), which a rollout
trial (trial.py) reads to find the promise it checks. The record is written first and names the sha256 of the
yaml it belongs to, so a reader never pairs a guard with another publish's record.

A guard is data, never code: `strategy.guard_env` names match `[A-Z_][A-Z0-9_]*`, values are scalars without line
breaks or NUL (`env_value`, checked when a config is validated and again when a guard is rebuilt from MLflow params),
and `selected.env` quotes each value (`shlex.quote`), so `set -a; . selected.env` only sets variables. The names
the .env derives itself (what ships: config.RESERVED_ENV) are no strategy's: a guard_env setting one is refused when a
config is validated and again at publish (`merged_env`), so no line overrides another. The yaml
carries the same environment, and the device count its sweep measured (a guard never means "every device")."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shlex
import tempfile
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from .. import paths
from ..config import RESERVED_ENV, RESERVED_ENV_PREFIX, ConfigError, check_env, check_guard_env, env_value

ENV_VAR = paths.ROOT_ENV
GROUP = "rollout"
LATEST = "selected"
META_SUFFIX = ".meta.json"
RESOLVER = "morphogen_rollout_root"
# Strategy params that are not knobs of the strategy's code: the guard leaves them to conf/strategy/.
_NOT_KNOBS = ("name", "original")
ENV_PREFIX = "strategy.guard_env."
# No configuration is GO: the environment of one query at a time (multi_stream with streams=1, no_go_mapping).
NO_GO_ENV = {"MORPHOGEN_GPU_BATCH_POLICY": "latency", "MORPHOGEN_GPU_STREAMS": 1, "MORPHOGEN_GPU_CUDA_GRAPH": False}


root = paths.root  # the search-path root that holds `rollout/`: $MORPHOGEN_ROLLOUT_DIR, else paths.outputs_root()


def store() -> Path:
    """Where guards are written and read: <root>/rollout."""
    return root() / GROUP


def _resolve_root() -> str:
    path = root()
    try:  # Hydra warns about a search path that does not exist (a fresh checkout)
        (path / GROUP).mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    return str(path)


def register_resolver() -> None:
    """`${morphogen_rollout_root:}` for conf/config.yaml's hydra.searchpath (needed before Hydra composes)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, _resolve_root)


register_resolver()


def guard_name(dataset: str, device_kind: str, engine: str, num_pages: Any = None) -> str:
    """A file-safe name per (dataset and its size, device kind, engine), e.g. mainnet-16817159p-nvidia-h100-80gb-hbm3-pallas:
    sweeps of one dataset at two sizes (dataset.num_pages) never share a guard. `num_pages` None: the name without it."""
    size = "" if num_pages in (None, "", "None") else f"-{num_pages}p"
    return re.sub(r"[^a-z0-9]+", "-", f"{dataset}{size}-{device_kind}-{engine}".lower()).strip("-")


def params_digest(params: Mapping[str, Any]) -> str:
    """The digest of a cell's params as it logged them at its start (tag PARAMS_DIGEST_TAG): a guard rebuilt later
    from the run's params checks it, so params added to the run afterwards never reach a guard."""
    return hashlib.sha256(json.dumps({str(k): str(v)[:6000] for k, v in params.items()}, sort_keys=True).encode()).hexdigest()


PARAMS_DIGEST_TAG = "params_digest"


def check_params(params: Mapping[str, Any], tags: Mapping[str, Any], run: str) -> None:
    """The params a guard is rebuilt from are the ones the cell logged at its start (its PARAMS_DIGEST_TAG);
    ConfigError (one line) when they differ (params added or changed afterwards). A run without the tag predates it
    (`legacy`: refused by a publish unless trusted, re-measured by a resume)."""
    want = tags.get(PARAMS_DIGEST_TAG)
    if want and params_digest(params) != want:
        raise ConfigError(f"cell run {run}: its params differ from what it logged at its start (params_digest): params "
                          "were added afterwards; no guard is built from it (re-run that cell)")


def legacy(tags: Mapping[str, Any]) -> bool:
    """A cell recorded before cells logged their params digest: nothing shows its params are the ones it ran with."""
    return not tags.get(PARAMS_DIGEST_TAG)


def check_not_legacy(cells: list[tuple[str, Any, str]]) -> None:
    """ConfigError (one line) naming the (label, q, run) cells a guard would ship that have no params digest, and the
    fix: re-measure them, or --trust-legacy."""
    if cells:
        named = ", ".join(f"{label} q={q} (run {run})" for label, q, run in cells)
        raise ConfigError(f"{len(cells)} cell(s) the guard ships were recorded without a params digest (before it "
                          f"existed), so their params may have been edited since: {named}; re-measure them "
                          "(the sweep's command again with resume=true re-measures such cells) or publish "
                          "with --trust-legacy")


# The .env's own lines (config.RESERVED_ENV, the one list a strategy's guard_env may not set).
_BATCHING, _STRATEGY, _ENGINE, _PLACEMENT, _DEVICES, _DRY_RUN = RESERVED_ENV


def guard_env_lines(params: Mapping[str, Any] | None, devices_used: Any = None, *, engine: str = "xla",
                    dry_run: bool = False) -> dict[str, str]:
    """What a guard ships, spelled out for a deployment (the .env's own lines beside the strategy's guard_env):
    MORPHOGEN_GPU_BATCHING on/off (None params: the single-query loop, off), the strategy and each of its knobs
    (MORPHOGEN_GPU_STRATEGY_<KNOB>), the engine, the placement and its device count, and MORPHOGEN_GPU_DRY_RUN on CPU.
    Every name is reserved (config.reserved_env); ConfigError (one line) for two knobs spelled as one name."""
    out: dict[str, str] = {}
    if params is None:
        out |= {_BATCHING: "off", _STRATEGY: "loop", _ENGINE: engine, _PLACEMENT: "single", _DEVICES: "1"}
    else:
        mapping = guard_mapping(params, devices_used)
        out[_BATCHING] = "on"
        out[_STRATEGY] = str(params["strategy.name"])
        knobs: dict[str, str] = {}
        for knob, value in sorted(_flat(mapping.get("strategy", {})).items()):
            text = ",".join(map(str, value)) if isinstance(value, list) else "null" if value is None else value
            name = RESERVED_ENV_PREFIX + re.sub(r"[^A-Z0-9]+", "_", knob.upper())
            if name in knobs:
                raise ConfigError(f"strategy knobs {knobs[name]!r} and {knob!r} are both {name} in a guard's .env; "
                                  "rename one")
            knobs[name] = knob
            out[name] = env_value("MORPHOGEN_GPU_X", text)
        out[_ENGINE] = str(params.get("engine.name", engine))
        out[_PLACEMENT] = str(params.get("placement.name", "single"))
        out[_DEVICES] = str(mapping.get("placement", {}).get("devices", 1))
    if dry_run:
        out[_DRY_RUN] = "cpu"
    return out


def merged_env(*parts: Mapping[str, Any]) -> dict[str, Any]:
    """One .env's lines from its parts (a strategy's guard_env, the lines the guard derives): ConfigError (one line)
    for a name in two parts, so no line of a .env ever overrides another."""
    out: dict[str, Any] = {}
    for part in parts:
        twice = sorted(set(out) & set(part))
        if twice:
            raise ConfigError(f"a guard's .env would set {', '.join(twice)} twice (a strategy's guard_env and the "
                              "lines the guard derives); nothing written: rename it in the strategy's guard_env")
        out |= part
    return out


def _flat(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in node.items():
        if isinstance(v, Mapping):
            out |= _flat(v, f"{prefix}{k}_")
        else:
            out[f"{prefix}{k}"] = v
    return out


def typed(value: Any) -> Any:
    """An MLflow param back to its value: 'None' -> None, 'True' -> True, "['A', 'B']" -> list, '4' -> 4."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return {"null": None, "true": True, "false": False}.get(value, value)


def env_of(params: Mapping[str, Any]) -> dict[str, str]:
    """The guard environment of one configuration from its flattened params (MLflow strings), checked."""
    return check_guard_env({k[len(ENV_PREFIX):]: v for k, v in params.items() if k.startswith(ENV_PREFIX)})


def env_text(env: Mapping[str, Any], header: str = "") -> str:
    """`NAME=value` lines for `set -a; . file` (values shell-quoted, so sourcing sets variables and runs nothing),
    after `header`'s lines as comments."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(check_env(env).items()))


def _exact(text: str) -> Any:
    """A guard_env param typed only where its type prints back as the same text ('4' -> 4, '0x10' stays a string):
    the yaml's value then gives the environment the .env's text."""
    value = typed(text)
    same = isinstance(value, (bool, int, float)) and env_value("MORPHOGEN_GPU_X", value) == env_value("MORPHOGEN_GPU_X", text)
    return value if same else text


def guard_mapping(params: Mapping[str, Any], devices_used: Any = None, *, with_env: bool = False) -> dict[str, Any]:
    """The guard of one configuration from its flattened params: strategy, engine, their settings and the placement
    with the device count the sweep measured (`devices_used`, a cell's tag, where its placement.devices was null:
    every device). `with_env`: the guard environment too, as the .env carries it (a guard's yaml); without it the
    mapping's strategy node is the strategy's knobs alone (a run's name, a report's label)."""
    strategy = str(params["strategy.name"])
    engine = str(params.get("engine.name", "xla"))
    knobs = nested({k[len("strategy."):]: typed(v) for k, v in params.items()
                     if k.startswith("strategy.") and not k.startswith(ENV_PREFIX)
                     and k[len("strategy."):] not in _NOT_KNOBS})
    env = env_of(params) if with_env else {}
    if env:
        knobs["guard_env"] = {k: _exact(v) for k, v in sorted(env.items())}
    engine_cfg = nested({k[len("engine."):]: typed(v) for k, v in params.items()
                          if k.startswith("engine.") and k != "engine.name"})
    placement = str(params.get("placement.name", "single"))
    out: dict[str, Any] = {"defaults": [{"override /strategy": strategy}, {"override /engine": engine},
                                        {"override /placement": placement}, "_self_"]}
    devices = typed(params.get("placement.devices"))
    if devices is None and devices_used is not None:
        devices = typed(str(devices_used))
    if devices is not None:
        out["placement"] = {"devices": devices}
    if knobs:
        out["strategy"] = knobs
    if engine_cfg:
        out["engine"] = engine_cfg
    return out


def no_go_mapping() -> dict[str, Any]:
    """No configuration is GO: serve one query at a time."""
    return {"defaults": [{"override /strategy": "multi_stream"}, "_self_"],
            "strategy": {"streams": 1, "guard_env": dict(NO_GO_ENV)}}  # the environment NO_GO_ENV's .env sets


def tree(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """MLflow params (flattened, strings) under `prefix` as the typed mapping they were flattened from, the prefix
    dropped: `tree(p)` is a cell's whole config, `tree(p, "strategy.")` its strategy node."""
    return nested({k[len(prefix):]: typed(v) for k, v in params.items() if k.startswith(prefix)})


def nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def to_yaml(mapping: Mapping[str, Any], header: str) -> str:
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return f"# @package _global_\n{comments}" + yaml.safe_dump(dict(mapping), sort_keys=False, default_flow_style=False)


def check_writable(folder: Path | None = None) -> None:
    """The guard store (`folder`, default `store()`) can take a guard: created if missing and a file written and
    removed there. ConfigError (one line) otherwise: a sweep checks this before its first cell."""
    folder = folder if folder is not None else store()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".writable.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise ConfigError(f"the rollout guard store {folder} is not writable ({err.strerror}); set {ENV_VAR} to a "
                          "writable folder") from None


@dataclass(frozen=True)
class GuardMeta:
    """What a rollout trial needs to find a guard's sweep and the promise it made (`<name>.meta.json`)."""

    guard: str                       # the guard's name in the store
    guard_sha256: str                # of the yaml text this record belongs to
    sweep_dir: str
    parent_run_id: str               # the sweep run; its cells are the promise
    tracking_uri: str
    experiment: str
    code_version: str
    device_kind: str
    dataset: str
    dataset_fingerprint: str
    engine: str
    strategy: str | None             # None: no configuration is GO (the guard serves one query at a time)
    selected: str | None             # the shipped configuration's label and config_id
    config_id: str | None
    fallback: str | None             # None: the single-query loop
    fallback_config_id: str | None
    q: tuple[int, ...]               # the q values the sweep measured the shipped configuration at
    sweep_start_ms: int = 0          # when the sweep run started (MLflow's start_time): `selected` only moves forward
    decision: str = ""               # the decision's headline

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> GuardMeta:
        """Raises ValueError (or KeyError, TypeError) for a record that is not one."""
        raw = json.loads(text)
        values = {f.name: raw[f.name] if f.name in raw or f.default is MISSING else raw.get(f.name, f.default)
                  for f in fields(cls)}
        values["q"] = tuple(int(q) for q in values["q"])
        return cls(**values)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def save(folder: Path, name: str, text: str, meta: GuardMeta | None = None) -> Path:
    """Write `<name>.yaml` (and its record `<name>.meta.json` first, when given) in `folder`, each atomically."""
    if meta is not None:
        paths.atomic_write(folder / f"{name}{META_SUFFIX}", meta.to_json())
    paths.atomic_write(folder / f"{name}.yaml", text)
    return folder / f"{name}.yaml"


def _saved_meta(folder: Path, name: str) -> GuardMeta | None:
    try:
        return GuardMeta.from_json((folder / f"{name}{META_SUFFIX}").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def publish(name: str, text: str, where: Path | None = None, meta: GuardMeta | None = None, *,
            make_selected: bool = False) -> list[str]:
    """Save a guard (and its record) as `name` and as the latest (`selected`) in the store. Each of the two moves
    only to a sweep that started after the one its saved record names (a re-publish of an older sweep leaves it),
    unless `make_selected`. Returns one line per file set saying what it replaced or kept."""
    folder = where if where is not None else store()
    said: list[str] = []
    try:
        for target in (name, LATEST):
            old = _saved_meta(folder, target)
            if (old is not None and meta is not None and not make_selected and old.parent_run_id != meta.parent_run_id
                    and old.sweep_start_ms > meta.sweep_start_ms):
                said.append(f"guard {target!r} kept: it is of a newer sweep ({old.sweep_dir}, run {old.parent_run_id}: "
                            f"{old.decision or old.selected or 'no GO'}); --make-selected to move it to this one")
                continue
            if old is not None and meta is not None and old.parent_run_id != meta.parent_run_id:
                said.append(f"guard {target!r} replaced: was sweep {old.sweep_dir} (run {old.parent_run_id}: "
                            f"{old.decision or old.selected or 'no GO'})")
            save(folder, target, text, meta)
    except OSError as err:
        raise ConfigError(f"cannot save the rollout guard in {folder} ({err.strerror}); set {ENV_VAR} to a writable folder") from None
    return said


def inside_store(path: Path) -> bool:
    """`path` (a what-if's --out, or its rollout/ folder) is or lies in the guard store, or holds it."""
    where, guards = path.expanduser().resolve(), store().resolve()
    return where == guards or guards in where.parents or (where / GROUP) == guards or where == root().resolve()


def read_meta(name: str) -> GuardMeta:
    """The record of the saved guard `name`, checked against its yaml; ConfigError (one line, with what to do)
    when it is missing (a guard published before trials checked their sweep), unreadable or from another publish."""
    yaml_path, meta_path = store() / f"{name}.yaml", store() / f"{name}{META_SUFFIX}"
    if not yaml_path.is_file():
        raise ConfigError(f"no rollout guard {name!r} in {store()} (saved: {', '.join(saved()) or 'none yet'})")
    text = yaml_path.read_text()
    found = re.search(r"^# Rollout guard from sweep (.+) \(run [0-9a-f]+\)", text, re.MULTILINE)  # a hint only
    again = f"python -m morphogen_exp.report --sweep-dir {found.group(1) if found else '<its sweep folder>'} --publish"
    if not meta_path.is_file():
        raise ConfigError(f"guard {name!r} ({yaml_path}) has no {meta_path.name}: it was published before rollout trials "
                          f"checked their sweep; re-publish it: {again}")
    try:
        meta = GuardMeta.from_json(meta_path.read_text())
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"guard {name!r}: {meta_path} is not a guard record ({type(err).__name__}: {err}); "
                          f"re-publish it: {again}") from None
    if meta.guard_sha256 != sha256(text):
        raise ConfigError(f"guard {name!r}: {yaml_path.name} and {meta_path.name} are from different publishes (or the yaml "
                          f"was edited); re-publish it: {again}")
    return meta


def saved() -> list[str]:
    folder = store()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def requested(argv: list[str]) -> list[str]:
    """Guard names that command-line overrides ask for (`+rollout=a`, `rollout=a,b`, `++rollout=a`)."""
    names: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") == GROUP and not key.startswith("~"):
            names += [n.strip() for n in value.split(",") if n.strip()]
    return names


def preflight(argv: list[str]) -> None:
    """Fail before Hydra starts when an override names a guard that is not saved, or asks for one with -m (a sweep
    over a guard would publish over it; a guard is trialled one configuration at a time): ConfigError, exit 2."""
    names = requested(argv)
    if names and {"-m", "--multirun"} & set(argv):
        raise ConfigError(f"-m with rollout={','.join(names)}: a guard is trialled without -m (one process, the q values "
                          "as q=1 or one trial each); drop -m for a trial, or drop +rollout= for a new sweep")
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"rollout={name!r} is not a guard name; saved guards: {', '.join(saved()) or 'none'}")
        if not (store() / f"{name}.yaml").is_file():
            have = ", ".join(saved()) or "none yet"
            hint = "run a sweep first (python -m morphogen_exp -m ...)" if name == LATEST else "pick a saved one"
            raise ConfigError(f"no rollout guard {name!r} in {store()} (saved: {have}); {hint}, or set {ENV_VAR}")
