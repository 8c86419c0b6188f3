"""Transfer-learning fine-tuning: a frozen stage, then a fine-tuning stage, resumable.

``train`` reads like the README's training section:

1. prepare the run folder (scan the data, save the settings and the split), or resume one;
2. build the model (ImageNet weights, or the checkpoint a resumed run continues from);
3. cache features: wherever the frozen part of the network sits below a single-tensor cut, its output
   is computed once per image and augmented view by LiteRT (:mod:`edgeclf.train.features`), so that
   only the part above the cut trains in Keras;
4. run each stage (stage 1 trains the head on the frozen backbone; stage 2 unfreezes the top
   ``--unfreeze`` layers at a lower learning rate, batch-norm layers frozen, in inference mode);
5. evaluate the best weights on the validation (and test) split;
6. report: ``report.json``, the plots.

After every epoch ``weights/last.keras``, ``weights/best.keras`` (on validation accuracy),
``results.csv`` and ``state.json`` are written atomically (:mod:`edgeclf.train.state`), so ``--resume``
after a kill loses at most the epoch that was running.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np

from edgeclf import fsutil, metrics, rundir
from edgeclf.config import TrainConfig
from edgeclf.data.dataset import Dataset, format_report, scan
from edgeclf.errors import EdgeclfError
from edgeclf.log import get_logger
from edgeclf.models.registry import get_backbone
from edgeclf.rundir import RunInfo
from edgeclf.train.stages import Stage, lr_at, plan_stages  # noqa: F401  (part of this module's API)
from edgeclf.train.state import EpochRecorder, RunState

log = get_logger(__name__)

# progress(description, total) -> a context manager yielding advance(n): how a caller shows long steps
Progress = Callable[[str, int], ContextManager[Callable[[int], None]]]


def no_progress(description: str, total: int) -> ContextManager[Callable[[int], None]]:
    return contextlib.nullcontext(lambda n: None)


@dataclass
class Run:
    """A run folder being trained: its settings, data split, state and plan."""

    dir: Path
    cfg: TrainConfig
    data: Dataset
    state: RunState
    stages: list[Stage] = field(default_factory=list)

    def __post_init__(self):
        self.stages = self.stages or plan_stages(self.cfg)


def train(cfg: TrainConfig, resume: str | Path | None = None, progress: Progress | None = None) -> RunInfo:
    """Train per ``cfg`` (or resume the run folder ``resume``; ``"last"``: the latest under
    ``cfg.project``) and return the finished run."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run = resume_run(resume, cfg.project) if resume is not None else prepare_run(cfg)
    if run.state.done:
        log.info(f"{run.dir} has already finished training; nothing to resume")
        return rundir.load_run(run.dir)
    session = _Session(run, progress or no_progress)
    session.build_model()
    session.cache_features()
    for stage_index in range(run.state.stage, len(run.stages)):
        session.run_stage(stage_index)
    report = session.evaluate()
    session.write_report(report)
    return rundir.load_run(run.dir)


def check_config(cfg: TrainConfig) -> None:
    """Settings a run cannot start with: one-line errors before anything is written."""
    backbone = get_backbone(cfg.model)
    cfg.imgsz = int(cfg.imgsz or backbone.size)
    if cfg.imgsz < backbone.min_size:
        raise EdgeclfError(f"{cfg.model} needs --imgsz of at least {backbone.min_size}")
    if cfg.optimizer not in ("adam", "rmsprop"):
        raise EdgeclfError(f"--optimizer must be adam or rmsprop (got {cfg.optimizer})")
    if str(cfg.unfreeze) != "all" and not str(cfg.unfreeze).isdigit():
        raise EdgeclfError(f"--unfreeze takes a number of layers or 'all' (got {cfg.unfreeze})")
    if cfg.cache_views < 0:
        raise EdgeclfError(f"--cache-views must be 0 or more (got {cfg.cache_views})")


def prepare_run(cfg: TrainConfig) -> Run:
    """Scan the data and create the run folder with the settings, data report and exact split."""
    check_config(cfg)
    ds = scan(cfg.data, val_split=cfg.val_split, seed=cfg.seed)
    log.info(format_report(ds.report))
    run_dir = rundir.new_run_dir(cfg.project, cfg.name)
    cfg.data = str(Path(cfg.data).resolve())
    cfg.save(run_dir / rundir.ARGS)
    fsutil.write_json(run_dir / rundir.DATA_REPORT, ds.report.to_dict())
    ds.save(run_dir / rundir.SPLIT)
    log.info(f"run folder: {run_dir}")
    return Run(run_dir, cfg, ds, RunState())


def resume_run(resume: str | Path, project: str | Path) -> Run:
    """The run folder ``resume`` (``"last"``: the latest under ``project``) as it was left."""
    run_dir = rundir.latest_run(project) if str(resume) == "last" else Path(resume)
    info = rundir.load_run(run_dir)
    state = RunState.load(run_dir)
    if not state.done:
        if state.epoch > 0 and not (run_dir / rundir.LAST).is_file():
            raise EdgeclfError(f"{run_dir}: {rundir.LAST} is missing; cannot resume")
        log.info(f"resuming {run_dir} after epoch {state.epoch}")
    return Run(run_dir, info.config, info.dataset(), state)


def _strategy():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@dataclass
class _StageInputs:
    """What one stage fits on: the cached features above its cut, or the images themselves."""

    cut: object | None  # features.Cut
    x_train: np.ndarray | None = None
    x_val: np.ndarray | None = None
    x_test: np.ndarray | None = None


class _Session:
    """The steps of :func:`train` on one run, sharing the model and the cached features."""

    def __init__(self, run: Run, progress: Progress):
        self.run, self.cfg, self.progress = run, run.cfg, progress
        self.ds = run.data
        self.size, self.k = int(self.cfg.imgsz), len(self.ds.classes)
        self.y = {split: np.array([s.label for s in self.ds.split(split)]) for split in ("train", "val", "test")}
        self.inputs: dict[int, _StageInputs] = {}
        self.views = 0

    # -- the model ------------------------------------------------------------------------------------
    def build_model(self) -> None:
        """The classifier, with the weights this run continues from."""
        import keras

        from edgeclf.data.pipeline import make_augmenter
        from edgeclf.models.build import HeadSpec, build_classifier
        from edgeclf.train.callbacks import save_model

        cfg, state = self.cfg, self.run.state
        keras.utils.set_random_seed(cfg.seed)
        self.strategy = _strategy()
        # a new run starts from cfg.weights, a resumed stage from its last epoch, a new stage from the best
        start = None if state.epoch == 0 else (rundir.LAST if state.stage_epoch else rundir.BEST)
        with self.strategy.scope():
            self.model = build_classifier(cfg.model, self.size, self.k, cfg.weights if start is None else "none",
                                          HeadSpec(cfg.head_units, cfg.dropout))
            if start is not None:
                self.model.load_weights(self.run.dir / start)
        self.weights_epoch = {None: 0, rundir.LAST: state.epoch, rundir.BEST: state.best_epoch}[start]
        self.augmenter = (make_augmenter(cfg.flip, cfg.rotation, cfg.zoom, cfg.contrast, cfg.seed)
                          if cfg.augment else None)
        self.recorder = EpochRecorder(self.run.dir, state, cfg.patience, lambda p: save_model(self.model, p))

    # -- the feature cache ----------------------------------------------------------------------------
    def cache_features(self) -> None:
        """Features at the cut of every stage still to run (and of the last stage, which evaluates),
        from one decode of each image and one LiteRT pass."""
        from edgeclf.models.build import set_trainable
        from edgeclf.train import features

        todo = sorted(set(range(self.run.state.stage, len(self.run.stages))) | {len(self.run.stages) - 1})
        cuts: dict[int, features.Cut] = {}
        for si in todo:
            set_trainable(self.model, self.run.stages[si].unfreeze)
            cut = features.find_cut(self.model) if self.cfg.cache else None
            cuts[si] = cut if cut is not None and not cut.trivial else None
            self.inputs[si] = _StageInputs(cuts[si])
        unique = sorted({c.index: c for c in cuts.values() if c is not None}.values(), key=lambda c: c.index)
        if not unique:
            return
        self.views = self.cfg.cache_views if self.augmenter is not None else 0
        splits = {"train": [s.path for s in self.ds.train], "val": [s.path for s in self.ds.val],
                  "test": [s.path for s in self.ds.test]}
        n = (1 + self.views) * len(splits["train"]) + len(splits["val"]) + len(splits["test"])
        t0 = time.time()
        with self.progress("caching features", n) as advance:
            out, engine_name = features.cache_features(self.model, unique, splits, self.size, self.cfg.resize,
                                                       self.augmenter, self.views, advance=advance)
        by_index = {c.index: {split: arrays[i] for split, arrays in out.items()} for i, c in enumerate(unique)}
        for si, cut in cuts.items():
            if cut is not None:
                got = by_index[cut.index]
                self.inputs[si] = _StageInputs(cut, got["train"], got["val"], got["test"])
        dt = time.time() - t0
        log.info(f"cached features at {len(unique)} cut(s) for {n} images ({1 + self.views} view(s) of train, "
                 f"val clean) with {engine_name} in {dt:.0f}s ({n / max(dt, 1e-9):.0f} images/s)")

    # -- the stages -----------------------------------------------------------------------------------
    def _fit_model(self, stage_index: int):
        """The model a stage fits: the top above its cut, or the whole classifier."""
        from edgeclf.train import features

        cut = self.inputs[stage_index].cut
        return self.model if cut is None else features.split_model(self.model, cut)[1]

    def run_stage(self, stage_index: int) -> None:
        """Fit one stage from where it stands, then load the best weights for what follows."""
        import keras

        from edgeclf.data.pipeline import image_dataset
        from edgeclf.models.build import set_trainable
        from edgeclf.train.callbacks import EpochCheckpoint

        cfg, state, stage = self.cfg, self.run.state, self.run.stages[stage_index]
        if not state.stage_finished(stage_index, stage):
            trainable = set_trainable(self.model, stage.unfreeze)
            inputs = self.inputs[stage_index]
            fit_model = self._fit_model(stage_index)
            log.info(f"stage {stage_index + 1}/{len(self.run.stages)}: {stage.name} — {stage.epochs} epochs, "
                     f"lr {stage.lr:g}, {trainable} backbone layers trainable"
                     + (f", training above {self.model.layers[inputs.cut.index].name} on cached features"
                        if inputs.cut is not None else ""))
            if inputs.cut is not None:
                y_train = np.tile(self.y["train"], 1 + self.views)
                data = dict(x=inputs.x_train.astype(np.float32), y=keras.utils.to_categorical(y_train, self.k),
                            batch_size=cfg.batch, shuffle=True,
                            validation_data=(inputs.x_val.astype(np.float32),
                                             keras.utils.to_categorical(self.y["val"], self.k)))
            else:
                data = dict(x=image_dataset(self.ds.train, self.size, self.k, cfg.batch, cfg.resize, shuffle=True,
                                            seed=cfg.seed, augmenter=self.augmenter),
                            validation_data=image_dataset(self.ds.val, self.size, self.k, cfg.batch, cfg.resize))
            with self.strategy.scope():
                optimizer = (keras.optimizers.Adam if cfg.optimizer == "adam" else keras.optimizers.RMSprop)(stage.lr)
                fit_model.compile(optimizer=optimizer, metrics=["accuracy"],
                                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing))
            callbacks = [EpochCheckpoint(self.recorder, stage_index, stage)]
            if cfg.schedule == "cosine":
                callbacks.append(keras.callbacks.LearningRateScheduler(
                    lambda e, _lr: lr_at(e, stage, cfg.warmup_epochs)))
            else:
                callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", factor=0.3, patience=2,
                                                                   min_lr=stage.lr * 1e-3))
            class_weight = _class_weights(self.y["train"], self.k) if cfg.class_weights == "auto" else None
            fit_model.fit(epochs=stage.epochs, initial_epoch=state.start_epoch(stage_index), callbacks=callbacks,
                          verbose=0, class_weight=class_weight, **data)
            self.weights_epoch = state.epoch
        self._load_best()  # the next stage starts from the best weights so far
        self.recorder.end_stage(stage_index)

    def _load_best(self) -> None:
        best = self.run.state.best_epoch
        if best > 0 and self.weights_epoch != best:
            self.model.load_weights(self.run.dir / rundir.BEST)
            self.weights_epoch = best

    # -- evaluation and report ------------------------------------------------------------------------
    def _predict(self, split: str) -> np.ndarray:
        """Class probabilities of the best model for a split, through the last stage's inputs."""
        from edgeclf.data.pipeline import image_dataset

        last = len(self.run.stages) - 1
        inputs = self.inputs[last]
        if inputs.cut is not None:
            x = {"val": inputs.x_val, "test": inputs.x_test}[split]
            return self._fit_model(last).predict(x.astype(np.float32), batch_size=256, verbose=0)
        samples = self.ds.split(split)
        return self.model.predict(image_dataset(samples, self.size, self.k, self.cfg.batch, self.cfg.resize,
                                                cache=False), verbose=0)

    def evaluate(self) -> dict:
        """``report.json``'s content: the best weights on the validation (and test) split."""
        self._load_best()
        state = self.run.state
        rep = metrics.classification_report(self._predict("val"), self.y["val"], self.ds.classes)
        rep.update(model=self.cfg.model, imgsz=self.size, best_epoch=state.best_epoch, epochs_run=state.epoch,
                   train_seconds=round(time.time() - self.recorder.t_start, 1))
        if self.ds.test:
            rep["test"] = metrics.classification_report(self._predict("test"), self.y["test"], self.ds.classes)
        return rep

    def write_report(self, rep: dict) -> None:
        from edgeclf.train import report as reporting

        run_dir, state = self.run.dir, self.run.state
        fsutil.write_json(run_dir / rundir.REPORT, rep)
        cm = np.array(rep["confusion_matrix"])
        reporting.plot_confusion(cm, self.ds.classes, run_dir / "confusion_matrix.png", normalize=False)
        reporting.plot_confusion(cm, self.ds.classes, run_dir / "confusion_matrix_normalized.png", normalize=True)
        reporting.plot_results(run_dir / rundir.RESULTS, run_dir / "results.png")
        state.done, state.train_seconds = True, rep["train_seconds"]
        state.save(run_dir)
        extra = f", top-5 {rep['top5']:.2%}" if "top5" in rep else ""
        log.info(f"val top-1 {rep['top1']:.2%}{extra}, macro-F1 {rep['macro_f1']:.3f} (best epoch "
                 f"{rep['best_epoch']} of {rep['epochs_run']}), {rep['train_seconds']:.0f}s of training")


def _class_weights(y_train: np.ndarray, k: int) -> dict[int, float]:
    counts = np.bincount(y_train, minlength=k).astype(float)
    return {i: float(counts.sum() / (k * c)) if c else 0.0 for i, c in enumerate(counts)}
