"""The feature cache's mechanics, with a stand-in engine (no model): layout, reuse, damaged and
half-written shards, keys, and the batches training reads from it (tf.data). The real pipeline's reuse
and invalidation are in test_train.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgeclf.errors import EdgeclfError
from edgeclf.train import cache

SHAPE = (2, 3)


@pytest.fixture(autouse=True)
def small_shards(monkeypatch):
    monkeypatch.setattr(cache, "SHARD_IMAGES", 4)  # 10 images: shards of 4, 4 and 2


def _image(path: str) -> float:
    return float(path.split("-")[1])


def _expected(path: str, view: int, cut: int) -> np.ndarray:
    return np.full(SHAPE, _image(path) + 100 * view + 0.25 * cut, np.float16)


class Engine:
    """Features of a batch: image value + 100 * view + 0.25 * cut index; counts its calls."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after, self.made = 0, fail_after, 0

    def make(self, cuts):
        self.made += 1
        index = {"a": 0, "b": 1}

        def run(images):
            self.calls += 1
            if self.fail_after is not None and self.calls > self.fail_after:
                raise KeyboardInterrupt  # a kill in the middle of caching
            return [np.repeat(images[:, None, None], 6).reshape(len(images), *SHAPE) + 0.25 * index[c] for c in cuts]

        return run, "stand-in"


def batches(paths, views, shard):
    """Two images per batch; view v adds 100 (the stand-in for augmentation, seeded by nothing else)."""
    for start in range(0, len(paths), 2):
        images = np.array([_image(p) for p in paths[start:start + 2]], np.float32)
        for v in range(1 + views):
            yield v, images + 100 * v


def _layout(images: int = 10, views: int = 2, per_shard: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(image, view) of every row: shard by shard, view-major within a shard."""
    image, view = [], []
    for first in range(0, images, per_shard):
        n = min(per_shard, images - first)
        for v in range(1 + views):
            image += range(first, first + n)
            view += [v] * n
    return np.array(image), np.array(view)


def _expected_rows(store, cut: int) -> np.ndarray:
    image, view = _layout(store.images, store.views)
    return np.stack([_expected(f"img-{i}", v, cut) for i, v in zip(image, view)])


def _setup(tmp_path, views=2, digest="d"):
    paths = [f"img-{i}" for i in range(10)]
    jobs = [cache.SplitJob("train", paths, views), cache.SplitJob("val", paths[:3], 0)]
    specs = {}
    for job in jobs:
        for cut in ("a", "b"):
            parts = {"cut": cut, "split_files": digest + job.name, "views": job.views}
            specs[(job.name, cut)] = cache.EntrySpec(parts, SHAPE, len(job.paths), job.views)
    return jobs, specs


def _ensure(tmp_path, engine, views=2, digest="d"):
    jobs, specs = _setup(tmp_path, views, digest)
    return cache.ensure(tmp_path, jobs, specs, engine.make, batches)


def test_rows_are_laid_out_by_shard_and_view_and_read_back(tmp_path):
    stores, report = _ensure(tmp_path, Engine())
    assert report.rows_computed == (10 * 3 + 3) * 2 and report.rows_reused == 0
    train = stores[("train", "b")]
    assert train.rows == 30 and train.shape == SHAPE
    meta = json.loads((train.folder / "meta.json").read_text())
    assert [s["rows"] for s in meta["shards"]] == [12, 12, 6]  # 4 images x 3 views, 4 x 3, 2 x 3
    rows = np.random.default_rng(0).permutation(train.rows)  # any order, as training reads them
    assert np.array_equal(train.read(rows), _expected_rows(train, cut=1)[rows])
    assert np.array_equal(train.image_of_row, _layout()[0])
    assert not list(tmp_path.rglob("*.part*")) and not list(tmp_path.rglob("shard-*.json"))


def test_a_second_run_computes_nothing(tmp_path):
    _ensure(tmp_path, Engine())
    engine = Engine()
    stores, report = _ensure(tmp_path, engine)
    assert engine.made == 0 and report.rows_computed == 0 and report.rows_reused == 66
    assert np.array_equal(stores[("val", "a")].read([2]), _expected("img-2", 0, 0)[None])


def test_a_different_key_is_a_different_entry(tmp_path):
    first, _ = _ensure(tmp_path, Engine())
    engine = Engine()
    second, report = _ensure(tmp_path, engine, digest="other files")
    assert engine.made == 1 and report.rows_computed == 66
    assert {s.key for s in first.values()}.isdisjoint({s.key for s in second.values()})
    assert cache.entry_key({"a": 1, "b": 2}) == cache.entry_key({"b": 2, "a": 1})
    assert cache.entry_key({"a": 1}) != cache.entry_key({"a": 2})


@pytest.mark.parametrize("damage", ["truncate", "flip a byte"])
def test_a_damaged_shard_is_rebuilt_never_read(tmp_path, damage):
    stores, _ = _ensure(tmp_path, Engine())
    store = stores[("train", "a")]
    shard = store.folder / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[-3] ^= 0xFF
        shard.write_bytes(bytes(data))
    _, specs = _setup(tmp_path)
    assert cache.open_entry(store.folder, specs[("train", "a")]) is None
    again, report = _ensure(tmp_path, Engine())
    assert report.rows_computed == 12  # shard 1 of one entry: 4 images x 3 views; the rest reused
    rebuilt = again[("train", "a")]
    assert np.array_equal(rebuilt.read(np.arange(rebuilt.rows)), _expected_rows(rebuilt, cut=0))


def test_a_kill_while_caching_keeps_the_finished_shards(tmp_path):
    engine = Engine(fail_after=7)  # dies in the middle of shard 1 of train (6 calls per full shard)
    with pytest.raises(KeyboardInterrupt):
        _ensure(tmp_path, engine)
    entries = [e for e in (tmp_path / "features").iterdir() if e.is_dir()]
    assert not any((e / "meta.json").exists() for e in entries)  # nothing looks complete
    (entries[0] / ".shard-00002.part.npy").write_bytes(b"half")  # what a kill leaves mid-write
    engine = Engine()
    stores, report = _ensure(tmp_path, engine)
    assert report.rows_computed == (30 - 12) * 2 + 3 * 2  # shard 0 of both train entries was kept
    assert not list(tmp_path.rglob("*.part*"))
    for (split, cut), store in stores.items():
        assert np.array_equal(store.read(np.arange(store.rows)), _expected_rows(store, "ab".index(cut)))


def test_file_digests_and_clear(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 3_000_000)
    (tmp_path / "b.bin").write_bytes(b"x" * 3_000_000)
    (tmp_path / "c.bin").write_bytes(b"y" * 3_000_000)
    a, b, c = cache.file_digests([str(tmp_path / n) for n in ("a.bin", "b.bin", "c.bin")])
    assert a == b != c
    root = tmp_path / "cache"
    _ensure(root, Engine())
    folder, freed = cache.clear(root)
    assert folder == root and freed > 0 and not root.exists()
    assert cache.clear(root) == (root, 0)
    with pytest.raises(EdgeclfError, match="does not look like an edgeclf cache"):
        cache.clear(tmp_path)  # a folder of other things is never deleted
    assert (tmp_path / "a.bin").exists()


def test_clear_cache_command(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "cache"
    _ensure(root, Engine())
    done = subprocess.run([sys.executable, "-m", "edgeclf", "train", "--clear-cache", "--cache-dir", str(root)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "deleted the feature cache" in done.stderr and not root.exists()


def test_feature_batches_one_machine_and_a_cluster(tmp_path):
    """One machine: an epoch is one pass, every row once, the last batch short. A cluster worker: the
    cluster's number of full batches (training wraps around its share; validation pads with weight 0)."""
    from edgeclf.train.inputs import Plan, feature_dataset

    stores, _ = _ensure(tmp_path, Engine())
    train, val = stores[("train", "a")], stores[("val", "a")]  # 30 rows (10 images x 3 views), 3 rows
    labels = np.arange(10) % 3
    one = Plan(global_batch=4, replicas=1, local_replicas=1, workers=1)
    batches = list(feature_dataset(train, labels, 3, one, steps=0, shuffle=True, seed=1).as_numpy_iterator())
    assert [len(x) for x, _, _ in batches] == [4] * 7 + [2]
    seen = np.concatenate([x[:, 0, 0] for x, _, _ in batches])
    assert sorted(seen) == sorted(_expected_rows(train, 0)[:, 0, 0])  # each row once, in a shuffled order
    assert not np.array_equal(seen, _expected_rows(train, 0)[:, 0, 0])
    y = np.concatenate([y for _, y, _ in batches]).argmax(1)
    assert np.array_equal(y, labels[(seen.astype(int) % 100)])  # each row keeps its image's label

    cluster = Plan(global_batch=4, replicas=2, local_replicas=1, workers=2)  # 2 rows per replica and step
    steps = cluster.steps(60)  # both workers' rows: 15 steps
    got = list(feature_dataset(train, labels, 3, cluster, steps, shuffle=True, seed=1).as_numpy_iterator())
    assert len(got) == 15 and all(len(x) == 2 and w.min() == 1 for x, _, w in got)
    seen = np.concatenate([x[:, 0, 0] for x, _, _ in got])
    assert len(set(seen)) == 30  # 30 rows in 30 slots: every row of the share once
    padded = list(feature_dataset(val, labels, 3, cluster, steps=4, shuffle=False, seed=0).as_numpy_iterator())
    weights = np.concatenate([w for _, _, w in padded])
    assert len(padded) == 4 and weights.tolist() == [1, 1, 1] + [0] * 5  # 3 rows, then weight-0 padding
