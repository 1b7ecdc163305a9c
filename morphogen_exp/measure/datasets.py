"""Page matrices on the device: deterministic synthetic pages built on the device from a seed, or a
raw matrix file (like the original's mainnet_compact.bin) memory-mapped and streamed in chunks.

The device copy is `(N, 1024) uint32` (a 4096-byte page as little-endian words), or an engine's own
layout of it (`load(..., layout=)`: built from the raw rows group by group, the raw matrix never
resident; `Dataset.raw_rows` regenerates raw rows on the device for checks that must not go through
the layout), or laid out over several devices (`load(..., sharding=)`: each device's rows generated
or streamed straight to it, never a whole copy on one device first). The host side can
always produce any page independently of the device (`host_pages`), which is what parity checks
compare against: the synthetic generator has a numpy twin, a file is read back from disk.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .. import paths
from ..config import ConfigError, DatasetConfig
from ..pir.engine import LayoutFn
from ..pir.pages import PAGE_BYTES, PAGE_WORDS, domain_bits_for, shard_rows
from .synthetic import fmix32

log = logging.getLogger(__name__)

__all__ = ["PAGE_BYTES", "PAGE_WORDS", "Dataset", "domain_bits_for", "load", "padded_rows", "plan_pages", "read_rows"]

_STREAM_PAGES = 1 << 14  # 64 MiB host->device chunks for files
StatKey = tuple[str, int, int, int, int, int]  # a file's (resolved path, size, mtime_ns, ctime_ns, device, inode)


# --- the synthetic generator: murmur3's finalizer over (seed, page, word), in numpy and in jnp ---

def synthetic_words_numpy(seed: int, pages: np.ndarray) -> np.ndarray:
    """Words of the given synthetic pages, (len(pages), 1024) u32, computed on the host."""
    i = np.asarray(pages, dtype=np.uint32)[:, None]
    w = np.arange(PAGE_WORDS, dtype=np.uint32)[None, :]
    with np.errstate(over="ignore"):
        return fmix32(fmix32(i ^ np.uint32(seed & 0xFFFFFFFF), np) ^ (w * np.uint32(0x9E3779B1)), np)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _synthetic_words_device(num_pages: int, seed: int) -> jax.Array:
    # iota + elementwise hash fuse into one kernel writing the output only: no temporaries, no host.
    i = jax.lax.broadcasted_iota(jnp.uint32, (num_pages, PAGE_WORDS), 0)
    w = jax.lax.broadcasted_iota(jnp.uint32, (num_pages, PAGE_WORDS), 1)
    return fmix32(fmix32(i ^ jnp.uint32(seed & 0xFFFFFFFF), jnp) ^ (w * jnp.uint32(0x9E3779B1)), jnp)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _synthetic_rows_device(start: jax.Array, size: int, seed: int) -> jax.Array:
    """Rows [start, start + size) of _synthetic_words_device, generated alone (a streamed build)."""
    i = jax.lax.broadcasted_iota(jnp.uint32, (size, PAGE_WORDS), 0) + start.astype(jnp.uint32)
    w = jax.lax.broadcasted_iota(jnp.uint32, (size, PAGE_WORDS), 1)
    return fmix32(fmix32(i ^ jnp.uint32(seed & 0xFFFFFFFF), jnp) ^ (w * jnp.uint32(0x9E3779B1)), jnp)


RAW = "raw"


@dataclass(frozen=True, eq=False)
class Dataset:
    """A page matrix resident on the device, and how to read any page back on the host."""

    name: str
    num_pages: int
    words: jax.Array      # (N, 1024) u32 on the device, or the engine's layout of them (see `layout`)
    seed: int
    path: Path | None = None
    layout: str = RAW     # "raw", or the layout function that built `words` (module.name)
    layout_build_s: float = 0.0  # seconds the layout took to build (0 for raw pages)
    fingerprint: str = ""        # what was loaded (`fingerprint`); set by the session, "" when built directly
    stat: StatKey | None = None  # the file's stat key when it was loaded (None: synthetic, or not recorded)

    @property
    def is_raw(self) -> bool:
        return self.layout == RAW

    def raw_rows(self, lo: int, hi: int) -> jax.Array:
        """Raw words of pages [lo, hi) on the device, (hi - lo, 1024) u32: a slice of `words` when they
        are the raw pages, else regenerated from the seed or read from the file (never the layout)."""
        if self.is_raw:
            return self.words[lo:hi]
        return read_rows(self.path, self.seed)(lo, hi)

    @property
    def domain_bits(self) -> int:
        return domain_bits_for(self.num_pages)

    @property
    def nbytes(self) -> int:
        return self.num_pages * PAGE_BYTES

    def host_pages(self, indices: np.ndarray) -> np.ndarray:
        """Pages as (len, 4096) uint8, computed independently of the device copy (zeros beyond N)."""
        idx = np.asarray(indices, dtype=np.int64)
        out = np.zeros((len(idx), PAGE_BYTES), dtype=np.uint8)
        inside = idx < self.num_pages
        if self.path is None:
            out[inside] = synthetic_words_numpy(self.seed, idx[inside]).view(np.uint8)
        else:
            raw = np.memmap(self.path, dtype=np.uint8, mode="r")
            for row, i in zip(np.nonzero(inside)[0], idx[inside], strict=True):
                chunk = raw[i * PAGE_BYTES : (i + 1) * PAGE_BYTES]
                out[row, : len(chunk)] = chunk
        return out

    def describe(self) -> dict:
        return {
            "name": self.name,
            "num_pages": self.num_pages,
            "domain_bits": self.domain_bits,
            "gib": round(self.nbytes / 2**30, 3),
            "source": str(self.path) if self.path else f"synthetic(seed={self.seed})",
            "layout": self.layout,
            **({"fingerprint": self.fingerprint} if self.fingerprint else {}),  # what was measured (checked at the end)
        }


def _file_pages(path: Path) -> int:
    if not path.exists():
        raise ConfigError(f"dataset.path {str(path)!r} does not exist: point it at a raw page-matrix file")
    if not path.is_file():
        raise ConfigError(f"dataset.path {str(path)!r} is not a regular file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"dataset.path {str(path)!r} is not readable: check its permissions")
    size = path.stat().st_size
    if size == 0:
        raise ConfigError(f"dataset.path {str(path)!r} is empty: a page matrix holds at least one 4096-byte page")
    return -(-size // PAGE_BYTES)


def plan_pages(cfg: DatasetConfig) -> int:
    """How many pages the dataset will have, checking the file without loading it."""
    return _file_pages(Path(cfg.path)) if cfg.path else cfg.num_pages


@functools.partial(jax.jit, donate_argnums=0)
def _write_rows(buf: jax.Array, chunk: jax.Array, start: jax.Array) -> jax.Array:
    return jax.lax.dynamic_update_slice(buf, chunk, (start, jnp.int32(0)))


def _file_rows(raw: np.memmap, lo: int, hi: int) -> np.ndarray:
    """Pages [lo, hi) of a raw matrix file as (hi - lo, 1024) u32 words (the last page zero-padded)."""
    chunk = np.zeros((hi - lo) * PAGE_BYTES, dtype=np.uint8)
    part = raw[lo * PAGE_BYTES : hi * PAGE_BYTES]
    chunk[: len(part)] = part
    return chunk.view("<u4").reshape(-1, PAGE_WORDS)


def read_rows(path: Path | None, seed: int) -> Callable[[int, int], jax.Array]:
    """read(lo, hi) -> raw words of pages [lo, hi) on the default device: generated there from the
    seed (synthetic) or read from the file. What a streamed layout build and the layout-independent
    parity fold read."""
    if path is None:
        return lambda lo, hi: _synthetic_rows_device(jnp.int32(lo), hi - lo, seed)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    return lambda lo, hi: jax.device_put(_file_rows(raw, lo, hi))


def padded_rows(num_pages: int, sharding: jax.sharding.Sharding | None) -> int:
    """Rows of the device array: N, or D * ceil(N / D) when the rows are split over D devices (rows past
    N are zero pages, never read)."""
    if sharding is None or sharding.is_fully_replicated:
        return num_pages
    d = len(sharding.device_set)
    return shard_rows(num_pages, d) * d


def _stream_rows(raw: np.memmap, n: int, start: int, count: int, device: jax.Device) -> jax.Array:
    """Rows [start, start + count) of a raw matrix file of n pages as (count, 1024) u32 on ``device``, streamed
    in 64 MiB chunks written in place (zeros past the file's end)."""
    buf = jax.device_put(jnp.zeros((count, PAGE_WORDS), jnp.uint32), device)
    for off in range(0, count, _STREAM_PAGES):
        stop = min(count, off + _STREAM_PAGES)
        words = np.zeros((stop - off, PAGE_WORDS), np.uint32)
        lo, hi = min(n, start + off), min(n, start + stop)
        if hi > lo:
            words[: hi - lo] = _file_rows(raw, lo, hi)
        # in place (donated); a ragged last chunk compiles once more
        buf = _write_rows(buf, jax.device_put(words, device), jnp.int32(off))
    return buf


def _load_file(path: Path, sharding: jax.sharding.Sharding | None) -> jax.Array:
    """The raw matrix on the default device, or each device's rows of ``sharding`` streamed to that device."""
    n = _file_pages(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    if sharding is None:
        return _stream_rows(raw, n, 0, n, jax.local_devices()[0])
    rows = padded_rows(n, sharding)
    parts = []
    for dev, idx in sharding.addressable_devices_indices_map((rows, PAGE_WORDS)).items():
        lo, hi, _ = idx[0].indices(rows) if idx else (0, rows, 1)  # this device's rows
        parts.append(_stream_rows(raw, n, lo, hi - lo, dev))
    return jax.make_array_from_single_device_arrays((rows, PAGE_WORDS), sharding, parts)


# --- identity: what the pages are (a cell's `dataset.fingerprint`, part of its cell_key for resume) ---

SYNTHETIC_VERSION = 1     # the generator above; bump it when its output changes
_HASH_CHUNK = 16 << 20    # bytes per read while hashing a file
_DISK_CACHE_ENTRIES = 512  # the on-disk cache keeps the newest entries
_RACY_NS = 2_000_000_000  # a file modified this close to its hashing is not cached (file_digest)


class DatasetChanged(RuntimeError):
    """The page file changed under a cell (while it was hashed, loaded or measured): its answers and
    its recorded identity would disagree, so the cell fails instead of recording them."""


@dataclass(frozen=True)
class Identity:
    """A dataset's fingerprint and, for a file, the stat key it was computed at."""

    fingerprint: str
    stat: StatKey | None = None


def stat_key(path: Path) -> StatKey:
    """What changes whenever a file's contents may have: size, mtime, ctime (an mtime set back still
    moves it), device and inode (a file replaced by a rename). Any change means hash again."""
    resolved = Path(path).expanduser().resolve()
    st = os.stat(resolved)
    return (str(resolved), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino)


def _hash_file(path: Path) -> str:
    """sha256 of the whole file, read in 16 MiB chunks (hashlib releases the GIL on big updates)."""
    h = hashlib.sha256()
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def cache_file() -> Path:
    """The on-disk fingerprint cache: $MORPHOGEN_FINGERPRINT_CACHE, else
    <outputs>/cache/dataset-fingerprints.json beside the guard store (<outputs> = $MORPHOGEN_ROLLOUT_DIR
    or <checkout>/outputs whatever the current directory; ./outputs when installed): every sweep and process of a checkout shares
    it, so a 68 GB file is hashed once; never beside the dataset."""
    env = os.environ.get("MORPHOGEN_FINGERPRINT_CACHE")
    if env:
        return Path(env).expanduser()
    return paths.root() / "cache" / "dataset-fingerprints.json"


_memo: dict[StatKey, str] = {}  # this process's hashes, by stat key
_memo_lock = threading.Lock()


def _disk_entries(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
        entries = data.get("entries", {}) if isinstance(data, dict) and data.get("version") == 1 else {}
        return {k: v for k, v in entries.items() if isinstance(v, dict) and isinstance(v.get("sha256"), str)}
    except (OSError, ValueError):
        return {}


def _disk_get(key: StatKey) -> str | None:
    entry = _disk_entries(cache_file()).get(json.dumps(key))
    return entry["sha256"] if entry else None


def _disk_put(key: StatKey, digest: str) -> None:
    """Add an entry (read, merge, paths.atomic_write: a lost race loses a cache entry only). A cache that cannot
    be written is logged and skipped, never a failed run."""
    path = cache_file()
    try:
        entries = _disk_entries(path)
        entries[json.dumps(key)] = {"sha256": digest, "at": time.time()}
        newest = sorted(entries.items(), key=lambda kv: kv[1].get("at", 0))[-_DISK_CACHE_ENTRIES:]
        paths.atomic_write(path, json.dumps({"version": 1, "entries": dict(newest)}, indent=0))
    except OSError as err:
        log.info("dataset fingerprint cache %s not written (%s): the file will be hashed again by the next process", path, err)


def file_digest(path: Path, attempts: int = 3) -> tuple[str, StatKey]:
    """(sha256 of the file's whole contents, the stat key it holds for): from this process's memory,
    else the on-disk cache, else hashed. The stat key is taken before and after hashing: a file that
    changes meanwhile is hashed again, then DatasetChanged. A file modified within `_RACY_NS` of its
    hashing is never cached (a write in the same clock tick leaves the stat key as it was; git's
    "racily clean" rule), so it is hashed again on every call until it has settled."""
    for _ in range(attempts):
        key = stat_key(path)
        with _memo_lock:
            digest = _memo.get(key)
        if digest is None:
            digest = _disk_get(key)
        if digest is None:
            started = time.time_ns()
            digest = _hash_file(Path(key[0]))
            if stat_key(path) != key:
                continue  # written to while we read it: the digest is of no version
            if started - max(key[2], key[3]) <= _RACY_NS:
                return digest, key
            _disk_put(key, digest)
        with _memo_lock:
            _memo[key] = digest
        return digest, key
    raise DatasetChanged(f"dataset.path {str(path)!r} kept changing while it was hashed ({attempts} tries): "
                         "run again once it is stable")


def identify(cfg: DatasetConfig, seed: int) -> Identity:
    """The dataset's identity now: a file's full-content sha256 and size (cached by stat key, so a
    big file is hashed once, again only after it changed), or the synthetic generator's version,
    page count and seed."""
    if not cfg.path:
        return Identity(f"synthetic-v{SYNTHETIC_VERSION}:pages={cfg.num_pages}:seed={seed}")
    digest, key = file_digest(Path(cfg.path))
    return Identity(f"file:sha256={digest}:size={key[1]}", key)


_recorded: dict[str, Identity] = {}  # resolved path -> the identity `fingerprint` handed out, until the next load


def fingerprint(cfg: DatasetConfig, seed: int) -> str:
    """What the pages are (a cell's `dataset.fingerprint`, part of its cell_key): see `identify`.
    A file's identity is remembered until the next `expect_recorded` (the session's next load of it)."""
    ident = identify(cfg, seed)
    if ident.stat is not None:
        _recorded[ident.stat[0]] = ident
    return ident.fingerprint


def expect_recorded(ident: Identity) -> None:
    """Raise DatasetChanged when the file's contents differ from the identity `fingerprint` recorded
    for it since the last call (a cell's tags, taken before it loads: they would name other pages than
    it measures). Consumes the record; nothing recorded, nothing to check."""
    if ident.stat is None:
        return
    rec = _recorded.pop(ident.stat[0], None)
    if rec is not None and rec.fingerprint != ident.fingerprint:
        raise DatasetChanged(f"dataset.path {ident.stat[0]!r} changed after this cell recorded its identity "
                             f"({rec.fingerprint} recorded, {ident.fingerprint} now): run the cell again")


def verify(ds: Dataset) -> None:
    """Raise DatasetChanged when the file a resident dataset was loaded from no longer holds the
    contents it was loaded with: the device copy, and any answer from it, are of the old contents.
    Cheap (a stat) while the file is unchanged; a touched file with the same contents passes."""
    if ds.path is None or ds.stat is None:
        return
    try:
        digest, key = file_digest(ds.path)
    except FileNotFoundError:
        raise DatasetChanged(f"dataset.path {str(ds.path)!r} was removed after it was loaded for this cell: "
                             "its answers are of the old contents and are not recorded; run the cell again") from None
    now = f"file:sha256={digest}:size={key[1]}"
    if now != ds.fingerprint:
        raise DatasetChanged(f"dataset.path {str(ds.path)!r} changed after it was loaded for this cell "
                             f"({ds.fingerprint} loaded, {now} now): its answers are of the old contents and "
                             "are not recorded; run the cell again")


def _within(read: Callable[[int, int], jax.Array], num_pages: int) -> Callable[[int, int], jax.Array]:
    """``read`` with rows at and past ``num_pages`` zero pages (a shard's rows past the database's end)."""

    def rows(lo: int, hi: int) -> jax.Array:
        if hi <= num_pages:
            return read(lo, hi)
        zeros = jnp.zeros((hi - max(lo, num_pages), PAGE_WORDS), jnp.uint32)
        return zeros if lo >= num_pages else jnp.concatenate([read(lo, num_pages), zeros])

    return rows


def _layout_on(layout: LayoutFn, read: Callable[[int, int], jax.Array], start: int, count: int,
               device: jax.Device) -> jax.Array:
    """``layout`` of raw rows [start, start + count), built on ``device`` from rows read group by group (dispatched,
    not awaited: the devices of a placement build their parts at once; the caller blocks on the whole)."""
    with jax.default_device(device):
        return layout(lambda lo, hi: read(start + lo, start + hi), count)


def _layout_placed(layout: LayoutFn, read: Callable[[int, int], jax.Array], num_pages: int,
                   sharding: jax.sharding.Sharding) -> jax.Array:
    """The engine's layout over ``sharding``'s devices, each device's part built on it from raw rows read group by
    group (never a whole raw copy, nor a whole layout on one device when sharded): split by rows, each device the
    layout of its ceil(N / D) raw rows (rows past N zero pages: every part has one shape); replicated, one build
    copied to the other devices of this process."""
    total = padded_rows(num_pages, sharding)
    index = sharding.addressable_devices_indices_map((total, PAGE_WORDS))  # this process's devices -> their rows
    if sharding.is_fully_replicated:
        first, *others = index
        home = _layout_on(layout, read, 0, num_pages, first)
        parts = [home, *(jax.device_put(home, d) for d in others)]
        return jax.make_array_from_single_device_arrays(home.shape, sharding, parts)
    rows = total // len(sharding.device_set)
    parts = [_layout_on(layout, _within(read, num_pages), idx[0].indices(total)[0] if idx else 0, rows, dev)
             for dev, idx in index.items()]
    shape = (parts[0].shape[0] * len(sharding.device_set), *parts[0].shape[1:])
    return jax.make_array_from_single_device_arrays(shape, sharding, parts)


def _load_layout(cfg: DatasetConfig, seed: int, layout: LayoutFn, sharding: jax.sharding.Sharding | None) -> Dataset:
    """The dataset in an engine's layout, built from raw rows generated / read group by group, on the first device
    or laid out over ``sharding``'s (``_layout_placed``)."""
    path = Path(cfg.path).expanduser().resolve() if cfg.path else None
    n = _file_pages(path) if path else cfg.num_pages
    t0 = time.perf_counter()
    read = read_rows(path, seed)
    if sharding is None:
        words = _layout_on(layout, read, 0, n, jax.local_devices()[0])
    else:
        words = _layout_placed(layout, read, n, sharding)
    words = jax.block_until_ready(words)  # layout_build_s: the whole build, every device's part
    name = f"{getattr(layout, '__module__', '?')}.{getattr(layout, '__qualname__', '?')}"
    return Dataset(cfg.name, n, words, seed, path, name, time.perf_counter() - t0)


def load(cfg: DatasetConfig, seed: int, layout: LayoutFn | None = None,
         sharding: jax.sharding.Sharding | None = None) -> Dataset:
    """Build (or load) the dataset on the device (the session keeps it for every cell of a sweep):
    the raw pages, or with ``layout`` (an engine's, pir Engine.layout) that engine's database,
    built in groups so the raw pages are never resident, its build time in ``layout_build_s``. With
    ``sharding`` the pages are laid out over its devices (``padded_rows`` rows; a replicated
    sharding puts the whole matrix on each), built in place on every device; an engine's layout is
    built per device from that device's rows (``_layout_placed``)."""
    device = jax.local_devices()[0]
    if layout is not None:
        return _load_layout(cfg, seed, layout, sharding)
    if cfg.path:
        path = Path(cfg.path).expanduser().resolve()
        return Dataset(cfg.name, _file_pages(path), _load_file(path, sharding), seed, path)
    if sharding is not None:
        rows = padded_rows(cfg.num_pages, sharding)
        build = jax.jit(lambda: _synthetic_words_device(rows, seed), out_shardings=sharding)
        return Dataset(cfg.name, cfg.num_pages, jax.block_until_ready(build()), seed)
    with jax.default_device(device):
        words = jax.block_until_ready(_synthetic_words_device(cfg.num_pages, seed))
    return Dataset(cfg.name, cfg.num_pages, words, seed)
