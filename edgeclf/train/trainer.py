"""Transfer-learning fine-tuning: a frozen stage, then a fine-tuning stage, resumable.

Stage 1 trains the head on a frozen backbone; stage 2 unfreezes the top ``--unfreeze`` layers at a
lower learning rate (batch-norm layers stay frozen, in inference mode). Wherever the frozen part of
the network sits below a single-tensor cut, its output is computed once per image and augmented view
by LiteRT (see :mod:`edgeclf.train.features`) and only the part above the cut trains in Keras.

After every epoch ``weights/last.keras``, ``weights/best.keras`` (on validation accuracy),
``results.csv`` and ``state.json`` are written atomically, so ``--resume`` after a kill loses at most
the epoch that was running.
"""
from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclf import fsutil
from edgeclf.config import TrainConfig
from edgeclf.data.dataset import Dataset, print_report, scan
from edgeclf.errors import EdgeclfError
from edgeclf.models.registry import get_backbone
from edgeclf import metrics, rundir
from edgeclf.rundir import RunInfo
from edgeclf.train import report as reporting

RESULT_FIELDS = ["epoch", "stage", "stage_epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
                 "elapsed"]  # elapsed: wall seconds since training started, feature caching included


@dataclass
class Stage:
    name: str  # frozen | fine_tune | scratch
    epochs: int
    lr: float
    unfreeze: int | str


def plan_stages(cfg: TrainConfig) -> list[Stage]:
    backbone = get_backbone(cfg.model)
    if backbone.constructor is None:  # trained from scratch: one stage, every layer
        return [Stage("scratch", cfg.epochs, cfg.lr, "all")]
    stages = [Stage("frozen", cfg.epochs, cfg.lr, 0)]
    if cfg.fine_tune_epochs > 0:
        unfreeze = "all" if str(cfg.unfreeze) == "all" else int(cfg.unfreeze)
        stages.append(Stage("fine_tune", cfg.fine_tune_epochs, cfg.fine_tune_lr, unfreeze))
    return stages


def lr_at(epoch: int, stage: Stage, cfg: TrainConfig) -> float:
    """Cosine decay with a linear warmup, per epoch (resumable: a function of the epoch only)."""
    warm = min(cfg.warmup_epochs, max(stage.epochs - 1, 0))
    if epoch < warm:
        return stage.lr * (epoch + 1) / (warm + 1)
    span = max(stage.epochs - warm, 1)
    return stage.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (epoch - warm) / span)))


def _console(console):
    if console is not None:
        return console
    from rich.console import Console

    return Console(soft_wrap=True)


def _load_state(run_dir: Path) -> dict:
    p = run_dir / rundir.STATE
    if p.is_file():
        import json

        return json.loads(p.read_text())
    return {"stage": 0, "stage_epoch": 0, "epoch": 0, "best_val_acc": -1.0, "best_epoch": -1,
            "since_best": 0, "done": False, "train_seconds": 0.0}


def _read_results(path: Path, upto_epoch: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if int(r["epoch"]) <= upto_epoch]


def _write_results(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    fsutil.write_text(path, buf.getvalue())


def _save_model(model, path: Path) -> None:
    with fsutil.atomic_path(path) as tmp:
        model.save(tmp)


def _class_weights(ds: Dataset, k: int) -> dict[int, float]:
    counts = np.bincount([s.label for s in ds.train], minlength=k).astype(float)
    return {i: float(counts.sum() / (k * c)) if c else 0.0 for i, c in enumerate(counts)}


def _strategy():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


class _Progress:
    """Feature extraction progress bars (rich), quiet when not on a terminal."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=console, transient=True,
                                 disable=not console.is_terminal)

    def __enter__(self):
        self.progress.__enter__()
        return self.progress

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)


def train(cfg: TrainConfig, resume: str | Path | None = None, console=None) -> RunInfo:
    """Train per ``cfg`` (or resume the run folder ``resume``) and return the run."""
    console = _console(console)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if resume is not None:
        run_dir = Path(resume)
        if str(resume) == "last":
            run_dir = rundir.latest_run(cfg.project)
        info = rundir.load_run(run_dir)
        cfg = info.config
        ds = info.dataset()
        state = _load_state(run_dir)
        if state.get("done"):
            console.print(f"{run_dir} has already finished training; nothing to resume")
            return info
        if not (run_dir / rundir.LAST).is_file() and state["epoch"] > 0:
            raise EdgeclfError(f"{run_dir}: {rundir.LAST} is missing; cannot resume")
        console.print(f"resuming {run_dir} after epoch {state['epoch']}")
    else:
        backbone = get_backbone(cfg.model)
        cfg.imgsz = int(cfg.imgsz or backbone.size)
        if cfg.imgsz < backbone.min_size:
            raise EdgeclfError(f"{cfg.model} needs --imgsz of at least {backbone.min_size}")
        if cfg.optimizer not in ("adam", "rmsprop"):
            raise EdgeclfError(f"--optimizer must be adam or rmsprop (got {cfg.optimizer})")
        ds = scan(cfg.data, val_split=cfg.val_split, seed=cfg.seed)
        print_report(ds.report, console)
        run_dir = rundir.new_run_dir(cfg.project, cfg.name)
        cfg.data = str(Path(cfg.data).resolve())
        cfg.save(run_dir / rundir.ARGS)
        fsutil.write_json(run_dir / rundir.DATA_REPORT, ds.report.to_dict())
        ds.save(run_dir / rundir.SPLIT)
        state = _load_state(run_dir)
        console.print(f"run folder: {run_dir}")

    import keras

    from edgeclf.data.pipeline import image_dataset, make_augmenter
    from edgeclf.models.build import HeadSpec, build_classifier, set_trainable
    from edgeclf.train import features

    keras.utils.set_random_seed(cfg.seed)
    size, k = int(cfg.imgsz), len(ds.classes)
    strategy = _strategy()
    with strategy.scope():
        model = build_classifier(cfg.model, size, k, "none" if state["epoch"] > 0 else cfg.weights,
                                 HeadSpec(cfg.head_units, cfg.dropout))
        if state["epoch"] > 0:
            model.load_weights(run_dir / rundir.LAST)
    augmenter = make_augmenter(cfg.flip, cfg.rotation, cfg.zoom, cfg.contrast, cfg.seed) if cfg.augment else None
    class_weight = _class_weights(ds, k) if cfg.class_weights == "auto" else None
    results_path = run_dir / rundir.RESULTS
    rows = _read_results(results_path, state["epoch"])
    stages = plan_stages(cfg)
    t_start = time.time() - float(state.get("train_seconds", 0.0))
    eval_fn = None

    # Every stage's cut, found up front, so one decode and one LiteRT pass cache them all.
    remaining = [(si, st) for si, st in enumerate(stages) if si >= state["stage"]]
    cuts: dict[int, features.Cut] = {}
    if cfg.cache:
        for si, stage in remaining:
            set_trainable(model, stage.unfreeze)
            cut = features.find_cut(model)
            if cut is not None and not cut.trivial:
                cuts[si] = cut
    cached: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    y_train = np.array([s.label for s in ds.train])
    y_val = np.array([s.label for s in ds.val])
    if cuts:
        unique = sorted({c.index: c for c in cuts.values()}.values(), key=lambda c: c.index)
        views = cfg.cache_views if augmenter is not None else 0
        t0 = time.time()
        with _Progress(console) as progress:
            tr, va, engine_name = features.cache_features(
                model, unique, [s.path for s in ds.train], [s.path for s in ds.val], size, cfg.resize,
                augmenter, views, progress=progress)
        by_index = {c.index: (t, v) for c, t, v in zip(unique, tr, va)}
        cached = {si: by_index[c.index] for si, c in cuts.items()}
        n = (1 + views) * len(ds.train) + len(ds.val)
        dt = time.time() - t0
        y_train = np.tile(y_train, 1 + views)
        console.print(f"cached features at {len(unique)} cut(s) for {n} images ({1 + views} view(s) of train, "
                      f"val clean) with {engine_name} in {dt:.0f}s ({n / max(dt, 1e-9):.0f} images/s)")

    for si, stage in remaining:
        trainable = set_trainable(model, stage.unfreeze)
        cut = cuts.get(si)
        console.print(f"[b]stage {si + 1}/{len(stages)}: {stage.name}[/b] — {stage.epochs} epochs, lr {stage.lr:g}, "
                      f"{trainable} backbone layers trainable"
                      + (f", training above {model.layers[cut.index].name} on cached features" if cut else ""))
        if cut is not None:
            x_tr, x_val = cached[si]
            _, fit_model = features.split_model(model, cut)
            fit_args = dict(x=x_tr.astype(np.float32), y=keras.utils.to_categorical(y_train, k),
                            batch_size=cfg.batch, shuffle=True,
                            validation_data=(x_val.astype(np.float32), keras.utils.to_categorical(y_val, k)))
            eval_fn = (lambda m=fit_model, xv=x_val: m.predict(xv.astype(np.float32), batch_size=256, verbose=0))
        else:
            fit_model = model
            train_ds = image_dataset(ds.train, size, k, cfg.batch, cfg.resize, shuffle=True, seed=cfg.seed,
                                     augmenter=augmenter)
            val_ds = image_dataset(ds.val, size, k, cfg.batch, cfg.resize)
            fit_args = dict(x=train_ds, validation_data=val_ds)
            eval_fn = (lambda m=model, vd=val_ds: m.predict(vd, verbose=0))
        with strategy.scope():
            opt = (keras.optimizers.Adam if cfg.optimizer == "adam" else keras.optimizers.RMSprop)(stage.lr)
            fit_model.compile(optimizer=opt,
                              loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                              metrics=["accuracy"])
        callbacks = [_EpochLogger(model, run_dir, stage, si, cfg, state, rows, results_path, console, t_start)]
        if cfg.schedule == "cosine":
            callbacks.append(keras.callbacks.LearningRateScheduler(lambda e, _lr, s=stage: lr_at(e, s, cfg)))
        else:
            callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", factor=0.3, patience=2,
                                                               min_lr=stage.lr * 1e-3))
        start = state["stage_epoch"] if si == state["stage"] else 0
        if start < stage.epochs and not state.get("stopped_stage") == si:
            fit_model.fit(epochs=stage.epochs, initial_epoch=start, callbacks=callbacks, verbose=0,
                          class_weight=class_weight, **fit_args)
        # the next stage starts from the best weights so far
        if (run_dir / rundir.BEST).is_file():
            model.load_weights(run_dir / rundir.BEST)
        state.update(stage=si + 1, stage_epoch=0, since_best=0)
        fsutil.write_json(run_dir / rundir.STATE, state)

    # Evaluate the best model on the validation split (through the last stage's cached features).
    model.load_weights(run_dir / rundir.BEST)
    if eval_fn is None:  # resumed after the last stage had finished: run the whole model on LiteRT
        runner = features.TFLiteRunner(model)
        eval_fn = (lambda: runner(np.concatenate([x.numpy() for x, _ in image_dataset(ds.val, size, k, 64, cfg.resize)])))
    probs = eval_fn()
    rep = metrics.classification_report(probs, y_val, ds.classes)
    rep.update(model=cfg.model, imgsz=size, best_epoch=state["best_epoch"], epochs_run=state["epoch"],
               train_seconds=round(time.time() - t_start, 1))
    if ds.test:
        test_ds = image_dataset(ds.test, size, k, cfg.batch, cfg.resize)
        rep["test"] = metrics.classification_report(model.predict(test_ds, verbose=0),
                                                      np.array([s.label for s in ds.test]), ds.classes)
    fsutil.write_json(run_dir / rundir.REPORT, rep)
    cm = np.array(rep["confusion_matrix"])
    reporting.plot_confusion(cm, ds.classes, run_dir / "confusion_matrix.png", normalize=False)
    reporting.plot_confusion(cm, ds.classes, run_dir / "confusion_matrix_normalized.png", normalize=True)
    reporting.plot_results(results_path, run_dir / "results.png")
    state.update(done=True, train_seconds=rep["train_seconds"])
    fsutil.write_json(run_dir / rundir.STATE, state)
    _print_summary(rep, ds.classes, run_dir, console)
    return rundir.load_run(run_dir)


class _EpochLogger:
    """A Keras callback (duck-typed to keep keras out of module import): logs, checkpoints, early stops."""

    def __new__(cls, *args, **kwargs):
        import keras

        class EpochLogger(keras.callbacks.Callback):
            def __init__(self, model, run_dir, stage, stage_index, cfg, state, rows, results_path, console, t_start):
                super().__init__()
                self.full_model, self.run_dir, self.stage, self.si = model, run_dir, stage, stage_index
                self.cfg, self.state, self.rows, self.results_path = cfg, state, rows, results_path
                self.console, self.t_start = console, t_start
                self.t0 = time.time()

            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.time()

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                st = self.state
                st["epoch"] += 1
                st["stage"], st["stage_epoch"] = self.si, epoch + 1
                lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                val_acc = float(logs.get("val_accuracy", 0.0))
                row = {"epoch": st["epoch"], "stage": self.stage.name, "stage_epoch": epoch + 1,
                       "train_loss": f"{logs.get('loss', 0):.5f}", "train_acc": f"{logs.get('accuracy', 0):.5f}",
                       "val_loss": f"{logs.get('val_loss', 0):.5f}", "val_acc": f"{val_acc:.5f}", "lr": f"{lr:.3g}",
                       "seconds": f"{time.time() - self.t0:.1f}", "elapsed": f"{time.time() - self.t_start:.1f}"}
                self.rows.append(row)
                _save_model(self.full_model, self.run_dir / rundir.LAST)
                improved = val_acc > st["best_val_acc"]
                if improved:
                    st.update(best_val_acc=val_acc, best_epoch=st["epoch"], since_best=0)
                    _save_model(self.full_model, self.run_dir / rundir.BEST)
                else:
                    st["since_best"] += 1
                _write_results(self.results_path, self.rows)
                st["train_seconds"] = round(time.time() - self.t_start, 1)
                if st["since_best"] >= self.cfg.patience:
                    st["stopped_stage"] = self.si
                    self.model.stop_training = True
                fsutil.write_json(self.run_dir / rundir.STATE, st)
                self.console.print(
                    f"{self.stage.name:>9} {epoch + 1:>3}/{self.stage.epochs:<3} loss {logs.get('loss', 0):.4f} "
                    f"acc {logs.get('accuracy', 0):.4f} | val loss {logs.get('val_loss', 0):.4f} "
                    f"acc {val_acc:.4f} | lr {lr:.2g} | {time.time() - self.t0:.1f}s" + (" *" if improved else "")
                    + (" (early stop)" if self.model.stop_training else ""), highlight=False)

        return EpochLogger(*args, **kwargs)


def _print_summary(rep: dict, classes: list[str], run_dir: Path, console) -> None:
    from rich.table import Table

    table = Table(title=f"best model (epoch {rep['best_epoch']}) on {rep['images']} validation images")
    for col in ("class", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in classes:
        m = rep["per_class"][c]
        table.add_row(c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    console.print(table)
    extra = f", top-5 {rep['top5']:.2%}" if "top5" in rep else ""
    console.print(f"[b]val top-1 {rep['top1']:.2%}[/b]{extra}, macro-F1 {rep['macro_f1']:.3f}, "
                  f"{rep['train_seconds']:.0f}s of training. Results in {run_dir}")
    console.print(f"next: edgeclf export {run_dir} --int8", highlight=False)
