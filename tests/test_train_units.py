"""Fast unit tests of the training pieces: the cut finder on tiny Keras graphs, the learning-rate schedule,
the stage plan, the stratified split, and results.csv / state.json across kills and resumes."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from edgeclf.config import TrainConfig
from edgeclf.data.dataset import _stratified_split
from edgeclf.train.stages import Stage, lr_at, plan_stages
from edgeclf.train.state import RESULT_FIELDS, EpochRecorder, RunState, read_results, write_results


# --- find_cut on small graphs ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keras():
    import keras

    return keras


def _chain(keras, trainable_from: str | None, dropout: bool = False):
    """input -> preprocess -> conv_a -> conv_b -> pool -> [dropout] -> dense; layers before
    ``trainable_from`` frozen."""
    L = keras.layers
    x = inp = keras.Input((8, 8, 3))
    x = L.Rescaling(1 / 127.5, offset=-1, name="preprocess")(x)
    x = L.Conv2D(4, 3, padding="same", name="conv_a")(x)
    x = L.Conv2D(4, 3, padding="same", name="conv_b")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = L.Dropout(0.5, name="drop")(x)
    out = L.Dense(2, name="dense")(x)
    model = keras.Model(inp, out)
    frozen = True
    for layer in model.layers:
        if layer.name == trainable_from:
            frozen = False
        layer.trainable = not frozen
    return model


def test_cut_sits_below_the_first_trainable_layer(keras):
    from edgeclf.train.features import find_cut

    model = _chain(keras, "dense")
    cut = find_cut(model)
    assert model.layers[cut.index].name == "pool" and not cut.trivial
    assert tuple(cut.tensor.shape) == (None, 4)
    cut = find_cut(_chain(keras, "conv_b"))
    assert cut.tensor.shape[1:] == (8, 8, 4)
    assert find_cut(_chain(keras, "conv_b")).index == 2  # conv_a's output


def test_dropout_counts_as_moving_and_a_cut_at_the_input_is_trivial(keras):
    from edgeclf.train.features import find_cut

    model = _chain(keras, "dense", dropout=True)
    assert model.layers[find_cut(model).index].name == "pool"  # below the dropout, not below the dense
    everything = _chain(keras, "conv_a")
    assert find_cut(everything).trivial  # only the preprocessing is frozen: caching saves nothing
    nothing = _chain(keras, None)  # nothing trains: no cut to train above
    assert find_cut(nothing) is None


def test_cut_never_splits_a_residual_branch(keras):
    """Two tensors alive across a boundary (the skip and the branch) is no cut: it moves below the fork."""
    from edgeclf.train.features import find_cut

    L = keras.layers
    inp = keras.Input((8, 8, 4))
    stem = L.Conv2D(4, 1, name="stem")(inp)
    branch = L.Conv2D(4, 3, padding="same", name="branch_a")(stem)
    branch = L.Conv2D(4, 3, padding="same", name="branch_b")(branch)
    x = L.Add(name="add")([stem, branch])
    x = L.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inp, L.Dense(2, name="dense")(x))
    for layer in model.layers:
        layer.trainable = layer.name in ("branch_b", "dense")
    cut = find_cut(model)
    assert model.layers[cut.index].name == "stem"  # not branch_a: stem's output is still needed by the add


# --- learning-rate schedule and stage plan ---------------------------------------------------------------
def test_lr_warms_up_then_decays_by_cosine_to_one_percent():
    stage = Stage("frozen", 10, 1e-3, 0)
    lrs = [lr_at(e, stage, warmup_epochs=2) for e in range(10)]
    assert lrs[0] == pytest.approx(1e-3 / 3) and lrs[1] == pytest.approx(2e-3 / 3)
    assert lrs[2] == pytest.approx(1e-3)  # the peak right after warmup
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))  # then strictly down
    assert lr_at(10, stage, 2) == pytest.approx(1e-5)  # the curve ends at 1 % of the peak
    middle = 2 + (10 - 2) / 2
    assert lr_at(int(middle), stage, 2) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    one = Stage("fine_tune", 1, 1e-4, 8)
    assert lr_at(0, one, warmup_epochs=5) == pytest.approx(1e-4)  # a one-epoch stage has no warmup


@pytest.mark.parametrize("name", ["adam", "rmsprop"])
def test_the_weight_average_warms_up_then_follows_its_momentum(keras, name):
    """--ema: after each step the average is m * average + (1 - m) * weights, m = min(M, (1 + t) / (10 + t)); it
    is what SwapEMAWeights puts in the model for validation and checkpoints, and training goes on from the
    raw weights after."""
    import numpy as np

    from edgeclf.train.optimizers import make_optimizer

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")])
    model.compile(optimizer=make_optimizer(name, 0.05, 0.9), loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(32, 2)).astype("float32")
    expected = [w.copy() for w in model.get_weights()]
    raw = []
    for t in range(30):  # one step per batch, the weights read after each
        model.train_on_batch(x, y)
        weights = [v.numpy() for v in model.optimizer._trainable_variables]
        m = min(0.9, (1 + t) / (10 + t))
        expected = [m * a + (1 - m) * w for a, w in zip(expected, weights)]
        raw.append(weights)
    averages = [v.numpy() for v in model.optimizer._model_variables_moving_average]
    for a, e in zip(averages, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
    assert not np.allclose(averages[0], raw[-1][0])  # an average, not the last weights
    swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
    swap.set_model(model)
    swap.set_params({"epochs": 3})
    swap.on_epoch_end(0)  # validation and checkpoints see the average
    np.testing.assert_allclose(model.get_weights()[0], expected[0], rtol=1e-5, atol=1e-6)
    swap.on_epoch_begin(1)  # the next epoch trains the raw weights again
    np.testing.assert_allclose(model.get_weights()[0], raw[-1][0], rtol=1e-5, atol=1e-6)
    plain = make_optimizer(name, 0.05, 0.0)
    assert not plain.use_ema


def test_plan_stages():
    cfg = TrainConfig(data="d", model="mobilenet_v2", epochs=3, fine_tune_epochs=2, unfreeze="12", lr=1e-3,
                      fine_tune_lr=1e-5)
    assert plan_stages(cfg) == [Stage("frozen", 3, 1e-3, 0), Stage("fine_tune", 2, 1e-5, 12)]
    cfg.unfreeze = "all"
    assert plan_stages(cfg)[1].unfreeze == "all"
    cfg.fine_tune_epochs = 0
    assert [s.name for s in plan_stages(cfg)] == ["frozen"]
    scratch = TrainConfig(data="d", model="simple_cnn", epochs=7, fine_tune_epochs=4)
    assert plan_stages(scratch) == [Stage("scratch", 7, scratch.lr, "all")]


# --- the stratified split --------------------------------------------------------------------------------
def _items(per_class: dict[str, int], dup_of: dict[tuple[str, int], int] | None = None):
    """(split, class, file, digest) as the scan makes them; dup_of[(c, i)] = j: file i has file j's bytes."""
    items = []
    for c, n in per_class.items():
        for i in range(n):
            digest = f"{c}{(dup_of or {}).get((c, i), i)}"
            items.append(("train", c, f"{c}/{i}.jpg", digest))
    return items


def test_stratified_split_per_class_and_seeded():
    items = _items({"a": 40, "b": 10, "c": 1}) + [("test", "a", "t.jpg", "t")]
    one = _stratified_split(items, 0.25, seed=3)
    again = _stratified_split(items, 0.25, seed=3)
    other = _stratified_split(items, 0.25, seed=4)
    val = lambda out, c: sorted(f for s, cc, f, _ in out if s == "val" and cc == c)  # noqa: E731
    assert (len(val(one, "a")), len(val(one, "b")), len(val(one, "c"))) == (10, 2, 0)  # a lone file stays in train
    assert one == again and val(one, "a") != val(other, "a")
    assert ("test", "a", "t.jpg", "t") in one  # test/ stays test
    assert sorted(f for _, _, f, _ in one) == sorted(f for _, _, f, _ in items)  # nothing lost or doubled


def test_stratified_split_keeps_identical_files_together():
    dups = {("a", i): 0 for i in range(1, 6)}  # files 0..5 of class a are the same bytes
    items = _items({"a": 20}, dups)
    for seed in range(8):
        out = _stratified_split(items, 0.3, seed)
        splits = {s for s, _, _, digest in out if digest == "a0"}
        assert len(splits) == 1, (seed, splits)  # never one copy in train and one in val (a leak)


# --- results.csv and state.json across kills -------------------------------------------------------------
def test_results_read_back_one_row_per_epoch(tmp_path):
    path = tmp_path / "results.csv"
    rows = [{"epoch": e, "stage": "frozen", "stage_epoch": e} for e in (1, 2, 1, 2, 3, 4)]
    write_results(path, rows)
    with open(path, newline="") as fh:
        assert next(csv.reader(fh)) == RESULT_FIELDS
    assert [int(r["epoch"]) for r in read_results(path, upto_epoch=3)] == [1, 2, 3]
    assert read_results(tmp_path / "missing.csv", 5) == []


class _Kill(Exception):
    pass


def _train(run_dir: Path, stages: list[Stage], val_accs: dict[int, float], patience: int = 99,
           kill_after: int | None = None) -> None:
    """Drive the recorder as the trainer does: resume from state.json, run what is left of each stage,
    optionally die right after global epoch ``kill_after`` was recorded."""
    state = RunState.load(run_dir)

    def save(path: Path) -> None:  # stands for model.save: the weights of the epoch just recorded
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(state.epoch))

    recorder = EpochRecorder(run_dir, state, patience, save_weights=save)
    for si in range(state.stage, len(stages)):
        stage = stages[si]
        if not state.stage_finished(si, stage):
            for e in range(state.start_epoch(si), stage.epochs):
                epoch = state.epochs_before(si) + e + 1
                out = recorder.end_epoch(si, stage, e + 1, {"val_accuracy": val_accs[epoch]}, stage.lr, 0.1)
                assert out.epoch == epoch
                if kill_after == out.epoch:
                    raise _Kill
                if out.stop:
                    break
        recorder.end_stage(si)


def _epochs(run_dir: Path) -> list[tuple[int, str, int]]:
    with open(run_dir / "results.csv", newline="") as fh:
        return [(int(r["epoch"]), r["stage"], int(r["stage_epoch"])) for r in csv.DictReader(fh)]


@pytest.mark.parametrize("kill_after", [1, 2, 3, 4, 5, 6])
def test_resume_after_any_epoch_numbers_each_epoch_once(tmp_path, kill_after):
    """Stage 1 early-stops after epoch 4 (patience 2), stage 2 runs 3 epochs: killed after any epoch and
    resumed, results.csv is the same as an uninterrupted run's."""
    stages = [Stage("frozen", 6, 1e-3, 0), Stage("fine_tune", 3, 1e-4, 8)]
    accs = {1: 0.5, 2: 0.8, 3: 0.7, 4: 0.7, 5: 0.81, 6: 0.82, 7: 0.8}
    expected = [(1, "frozen", 1), (2, "frozen", 2), (3, "frozen", 3), (4, "frozen", 4),
                (5, "fine_tune", 1), (6, "fine_tune", 2), (7, "fine_tune", 3)]
    ref = tmp_path / "ref"
    ref.mkdir()
    _train(ref, stages, accs, patience=2)
    assert _epochs(ref) == expected
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(_Kill):
        _train(run, stages, accs, patience=2, kill_after=kill_after)
    _train(run, stages, accs, patience=2)
    assert _epochs(run) == expected
    state = json.loads((run / "state.json").read_text())
    assert (state["epoch"], state["best_epoch"], state["stage"]) == (7, 6, 2)
    assert (run / "weights" / "best.keras").read_text() == "6" and (run / "weights" / "last.keras").read_text() == "7"


def test_an_epoch_recorded_in_results_but_not_in_state_runs_once_more_without_a_second_row(tmp_path):
    """A kill between results.csv and state.json: the epoch runs again, its row replaces the first one."""
    stages = [Stage("frozen", 4, 1e-3, 0)]
    accs = {e: 0.1 * e for e in range(1, 5)}
    with pytest.raises(_Kill):
        _train(tmp_path, stages, accs, kill_after=2)
    state = json.loads((tmp_path / "state.json").read_text())
    rows = read_results(tmp_path / "results.csv", 99)
    rows.append({**rows[-1], "epoch": 3, "stage_epoch": 3, "val_acc": "0.99"})  # epoch 3 written, state not
    write_results(tmp_path / "results.csv", rows)
    assert state["epoch"] == 2
    _train(tmp_path, stages, accs)
    assert [e for e, _, _ in _epochs(tmp_path)] == [1, 2, 3, 4]
    assert read_results(tmp_path / "results.csv", 4)[2]["val_acc"] == f"{0.3:.5f}"


def test_a_file_that_already_repeats_rows_is_repaired_on_resume(tmp_path):
    """A results.csv that repeats epochs (as the main job's flowers run did) is read back one row per
    epoch, so a resumed run writes each epoch once."""
    stages = [Stage("frozen", 5, 1e-3, 0)]
    accs = {e: 0.1 * e for e in range(1, 6)}
    with pytest.raises(_Kill):
        _train(tmp_path, stages, accs, kill_after=3)
    rows = read_results(tmp_path / "results.csv", 99)
    write_results(tmp_path / "results.csv", rows[:2] + rows)  # 1, 2, 1, 2, 3
    _train(tmp_path, stages, accs)
    assert [e for e, _, _ in _epochs(tmp_path)] == [1, 2, 3, 4, 5]


def test_state_json_round_trip_ignores_unknown_keys(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"epoch": 3, "stage": 1, "future_field": 1}))
    state = RunState.load(tmp_path)
    assert (state.epoch, state.stage, state.done) == (3, 1, False)
    assert not math.isnan(state.best_val_acc)
    state.save(tmp_path)
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 3


# --- TF_CONFIG ---------------------------------------------------------------------------------------------
def test_tf_config_names_the_cluster_and_this_task():
    from edgeclf.errors import EdgeclfError
    from edgeclf.train.distribute import TaskSpec, parse_tf_config

    two = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}
    assert parse_tf_config(json.dumps(two)) == TaskSpec(2, 1, "worker:1")
    chief = {"cluster": {"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}
    assert parse_tf_config(json.dumps(chief)) == TaskSpec(3, 1, "worker:0")  # the chief is rank 0
    assert parse_tf_config(json.dumps({**chief, "task": {"type": "chief", "index": 0}})).rank == 0
    alone = {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
    assert parse_tf_config(json.dumps(alone)) is None and parse_tf_config("") is None
    for bad, message in (("{not json", "not valid"), (json.dumps({**two, "task": {"type": "worker", "index": 2}}),
                                                      "not in the cluster"),
                         (json.dumps({**two, "task": {"type": "ps", "index": 0}}), "does not train")):
        with pytest.raises(EdgeclfError, match=message):
            parse_tf_config(bad)
