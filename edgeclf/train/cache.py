"""The feature cache on disk: what the frozen bottom of a network computes, kept between epochs, runs and
restarts, and read back in batches so that memory does not grow with the data set.

One *entry* holds the features of one split of the data at one cut of the network. Its folder name is
the sha256 of everything the numbers depend on (:func:`entry_key`): the backbone and the weights below
the cut (hashed from the weights themselves), the input size and resize method, the cut, the images in
order (hashed from their bytes), and for training images the augmentation settings, the number of
augmented views and the seed. Change any of these and the entry is a different folder.

    <cache dir>/<key>/
      meta.json             what the key was made of, shapes, and every shard's rows, bytes and sha256
      shard-00000.npy ...   float16 arrays (.npy): the rows of SHARD_IMAGES images, all their views

Shards are filled through memory-mapped arrays, flushed, fsynced and renamed into place; ``meta.json``
is written last. A shard whose size or checksum does not match is rebuilt, never read; the augmentation
is reseeded per shard, so a rebuilt shard (or one finished after a kill) holds exactly what an
uninterrupted run would have written. Rows are read with ``os.pread``: the operating system's page
cache holds what fits, not the process.

The cache folder is ``--cache-dir``, else ``$EDGECLF_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgeclf`` (by
default ``~/.cache/edgeclf``); delete it (or run ``edgeclf train --clear-cache``) to free the space.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgeclf import fsutil
from edgeclf.errors import EdgeclfError
from edgeclf.log import get_logger

log = get_logger(__name__)

FORMAT = 1
SHARD_IMAGES = 512  # images per shard file (with all their views)
FEATURES = "features"  # the entries live in <cache dir>/features/


def default_dir() -> Path:
    if os.environ.get("EDGECLF_CACHE_DIR"):
        return Path(os.environ["EDGECLF_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgeclf"


def resolve_dir(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_dir()


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


def clear(cache_dir: str | Path | None) -> tuple[Path, int]:
    """Delete the cached features (``<cache dir>/features``, and the folder itself when nothing else is
    in it); return the folder and the bytes freed. A folder without ``features/`` is left alone."""
    root = resolve_dir(cache_dir)
    if not root.exists():
        return root, 0
    features = root / FEATURES
    if not features.is_dir():
        if any(root.iterdir()):
            raise EdgeclfError(f"{root} does not look like an edgeclf cache folder (no {FEATURES}/ inside): "
                               f"not deleting it")
        root.rmdir()
        return root, 0
    freed = folder_bytes(features)
    shutil.rmtree(features)
    with contextlib.suppress(OSError):
        root.rmdir()  # only if empty
    return root, freed


# --- keys ------------------------------------------------------------------------------------------------
def file_digests(paths: list[str], workers: int | None = None) -> list[str]:
    """sha256 of every file's bytes (threads: hashlib releases the GIL on large buffers)."""
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 2)) as pool:
        return list(pool.map(fsutil.sha256, paths))


def weights_digest(layers) -> str:
    """sha256 of the weights of ``layers`` (Keras layers), in order."""
    h = hashlib.sha256()
    for layer in layers:
        for w in layer.get_weights():
            a = np.ascontiguousarray(w)
            h.update(f"{layer.name}:{a.dtype}:{a.shape};".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def entry_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class EntrySpec:
    """One entry to open or build: the features of one split's images at one cut."""

    parts: dict  # what the key is made of (saved in meta.json)
    shape: tuple[int, ...]  # one feature row
    images: int
    views: int  # augmented views per image on top of the clean one (0: clean only)

    @property
    def key(self) -> str:
        return entry_key(self.parts)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape)) * 2  # float16

    def shard_images(self, shard: int) -> tuple[int, int]:
        return shard * SHARD_IMAGES, min((shard + 1) * SHARD_IMAGES, self.images)

    @property
    def shards(self) -> int:
        return -(-self.images // SHARD_IMAGES)


# --- reading ---------------------------------------------------------------------------------------------
class FeatureStore:
    """A complete, verified entry, read by rows. Row ``r`` belongs to image ``image_of_row[r]``."""

    def __init__(self, folder: Path, meta: dict):
        self.folder, self.meta = Path(folder), meta
        self.key = meta["key"]
        self.shape = tuple(meta["shape"])
        self.views, self.images = int(meta["views"]), int(meta["images"])
        self.row_bytes = int(np.prod(self.shape)) * 2
        shards = meta["shards"]
        self.rows = sum(s["rows"] for s in shards)
        self._starts = np.cumsum([0] + [s["rows"] for s in shards])
        self._offsets = [s["offset"] for s in shards]
        self._files = [self.folder / s["file"] for s in shards]
        image_of_row = []
        for i, s in enumerate(shards):
            first, count = i * SHARD_IMAGES, s["rows"] // (1 + self.views)
            image_of_row.append(np.tile(np.arange(first, first + count, dtype=np.int64), 1 + self.views))
        self.image_of_row = np.concatenate(image_of_row) if image_of_row else np.zeros(0, np.int64)
        self._fds: dict[int, int] = {}

    def read(self, rows: np.ndarray) -> np.ndarray:
        """float16 features of ``rows`` (global row numbers), in that order. Consecutive rows of a shard
        are read with one ``pread``."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape), np.float16)
        if not len(rows):
            return out
        flat = out.reshape(len(rows), -1).view(np.uint8).reshape(len(rows), self.row_bytes)
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1
        breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(shard_of) != 0)) + 1
        for a, b in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(rows)]])):
            s = int(shard_of[a])
            pos = self._offsets[s] + (int(rows[a]) - int(self._starts[s])) * self.row_bytes
            want = (b - a) * self.row_bytes
            data = os.pread(self._fd(s), want, pos)
            if len(data) != want:
                raise EdgeclfError(f"{self._files[s]}: cache shard shorter than its manifest says "
                                   f"(delete {self.folder} and train again)")
            flat[a:b] = np.frombuffer(data, np.uint8).reshape(b - a, self.row_bytes)
        return out

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            if len(self._fds) >= 64:  # keep few files open: a million images are two thousand shards
                os.close(self._fds.pop(next(iter(self._fds))))
            fd = self._fds[shard] = os.open(self._files[shard], os.O_RDONLY)
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


def _npy_offset(path: Path) -> int:
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(fh)
        return fh.tell()


def _shard_ok(folder: Path, record: dict | None, verify: bool) -> bool:
    if not record:
        return False
    path = folder / record["file"]
    try:
        if path.stat().st_size != record["bytes"]:
            return False
    except OSError:
        return False
    return not verify or fsutil.sha256(path) == record["sha256"]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def open_entry(folder: Path, spec: EntrySpec) -> FeatureStore | None:
    """The entry in ``folder`` if it is complete and every shard checks out; else None."""
    meta = _read_json(folder / "meta.json")
    if not meta or meta.get("key") != spec.key or len(meta.get("shards", [])) != spec.shards:
        return None
    if not all(_shard_ok(folder, s, verify=True) for s in meta["shards"]):
        log.warning(f"feature cache {folder.name}: a shard is damaged or cut short; rebuilding it")
        return None
    return FeatureStore(folder, meta)


# --- building --------------------------------------------------------------------------------------------
@dataclass
class CacheReport:
    """What :func:`ensure` did: for the run's log, state.json and report.json."""

    dir: str
    entries: dict[str, str] = field(default_factory=dict)  # "<split>@<cut>" -> key
    rows_computed: int = 0
    rows_reused: int = 0
    seconds_computing: float = 0.0
    engine: str | None = None

    def to_dict(self) -> dict:
        return {"dir": self.dir, "entries": self.entries, "rows_computed": self.rows_computed,
                "rows_reused": self.rows_reused, "seconds_computing": round(self.seconds_computing, 1),
                "engine": self.engine}


@dataclass
class SplitJob:
    """The images of one split to cache, and how (views > 0: augmented copies with ``reseed``)."""

    name: str
    paths: list[str]
    views: int


# images of a shard, one view -> features of every cut being built, in the cuts' order
Compute = Callable[[np.ndarray], list[np.ndarray]]


def ensure(root: Path, jobs: list[SplitJob], specs: dict[tuple[str, str], EntrySpec],
           make_engine: Callable[[list[str]], tuple[Compute, str]],
           batches: Callable[[list[str], int, int], Iterator[tuple[int, np.ndarray]]],
           advance: Callable[[int], None] | None = None) -> tuple[dict[tuple[str, str], FeatureStore], CacheReport]:
    """Open every entry of ``specs`` ((split, cut name) -> spec), building what is missing.

    ``make_engine(cut names)`` returns a function from a batch of images to their features at those
    cuts, in that order; ``batches(paths, views, shard)`` yields (view, images) for a shard's paths,
    its augmentation seeded by the shard. The engine is made only if something has to be computed.
    """
    root = Path(root) / FEATURES
    root.mkdir(parents=True, exist_ok=True)
    report = CacheReport(str(root.parent))
    report.entries = {f"{split}@{cut}": spec.key for (split, cut), spec in specs.items()}
    stores: dict[tuple[str, str], FeatureStore] = {}
    with contextlib.ExitStack() as locks:
        for key in sorted({spec.key for spec in specs.values()}):  # in order: two runs never deadlock
            (root / key).mkdir(exist_ok=True)
            locks.enter_context(_locked(root / key / ".lock"))
        for name, spec in specs.items():
            store = open_entry(root / spec.key, spec)
            if store is not None:
                stores[name] = store
                report.rows_reused += store.rows
        missing = [name for name in specs if name not in stores]
        if not missing:
            if advance is not None:
                advance(sum(len(job.paths) * (1 + job.views) for job in jobs))
            return stores, report
        t0 = time.time()
        engine_cuts = sorted({cut for _, cut in missing})
        engine, report.engine = make_engine(engine_cuts)
        for job in jobs:
            cuts = [cut for split, cut in missing if split == job.name]
            if not cuts:
                if advance is not None:
                    advance(len(job.paths) * (1 + job.views))
                continue
            built, computed = _build(root, job, [specs[(job.name, c)] for c in cuts],
                                     [engine_cuts.index(c) for c in cuts], engine, batches, advance)
            for cut, store in zip(cuts, built):
                stores[(job.name, cut)] = store
            report.rows_computed += computed
            report.rows_reused += sum(store.rows for store in built) - computed
        report.seconds_computing = time.time() - t0
    return stores, report


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock: two runs caching the same data take turns; the second then finds it done."""
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build(root: Path, job: SplitJob, specs: list[EntrySpec], positions: list[int], engine: Compute, batches,
           advance) -> tuple[list[FeatureStore], int]:
    """Write the missing shards of ``specs`` (entries of one split; ``positions``: their place among the
    engine's outputs) from one pass over the images, then each entry's meta.json. Returns the stores
    and the number of rows computed (over all entries)."""
    folders = [root / spec.key for spec in specs]
    records: list[list[dict | None]] = []
    for spec, folder in zip(specs, folders):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.part*"):  # a temporary file a kill left behind (we hold the lock)
            stale.unlink()
        old = _read_json(folder / "meta.json")
        if old and old.get("key") == spec.key and len(old.get("shards", [])) == spec.shards:
            for s, record in enumerate(old["shards"]):  # keep the good shards of a damaged entry
                fsutil.write_json(folder / f"shard-{s:05d}.json", record)
        (folder / "meta.json").unlink(missing_ok=True)  # incomplete until every shard is in place again
        records.append([_read_json(folder / f"shard-{s:05d}.json") for s in range(spec.shards)])
    spec0, computed = specs[0], 0
    for shard in range(spec0.shards):
        first, end = spec0.shard_images(shard)
        n = end - first
        todo = [i for i, folder in enumerate(folders) if not _shard_ok(folder, records[i][shard], verify=True)]
        if not todo:
            if advance is not None:
                advance(n * (1 + job.views))
            continue
        rows = n * (1 + job.views)
        computed += rows * len(todo)
        with contextlib.ExitStack() as stack:
            arrays, tmps = {}, {}
            for i in todo:
                tmps[i] = stack.enter_context(fsutil.atomic_path(folders[i] / f"shard-{shard:05d}.npy"))
                arrays[i] = np.lib.format.open_memmap(tmps[i], mode="w+", dtype=np.float16,
                                                      shape=(rows, *specs[i].shape))
            filled = [0] * (1 + job.views)  # images written so far, per view (rows are view-major)
            for view, images in batches(job.paths[first:end], job.views, shard):
                outs = engine(images)
                k = len(images)
                start = view * n + filled[view]
                for i in todo:
                    arrays[i][start:start + k] = outs[positions[i]]
                filled[view] += k
                if advance is not None:
                    advance(k)
            if filled != [n] * (1 + job.views):
                raise RuntimeError(f"feature cache: shard {shard} got {filled} images per view, expected {n}")
            for i in todo:
                arrays[i].flush()
                offset = int(arrays[i].offset)
                del arrays[i]
                with open(tmps[i], "rb+") as fh:
                    os.fsync(fh.fileno())
                records[i][shard] = {"file": f"shard-{shard:05d}.npy", "rows": rows, "offset": offset,
                                     "bytes": tmps[i].stat().st_size, "sha256": fsutil.sha256(tmps[i])}
        for i in todo:  # the shard files are in place (renamed on leaving the block): now their records
            fsutil.write_json(folders[i] / f"shard-{shard:05d}.json", records[i][shard])
    stores = []
    for spec, folder, shard_records in zip(specs, folders, records):
        meta = {"format": FORMAT, "key": spec.key, "parts": spec.parts, "shape": list(spec.shape),
                "views": spec.views, "images": spec.images, "shards": shard_records,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        fsutil.write_json(folder / "meta.json", meta)
        for s in range(spec.shards):
            (folder / f"shard-{s:05d}.json").unlink(missing_ok=True)  # meta.json holds them now
        stores.append(FeatureStore(folder, meta))
    return stores, computed
