"""Transfer-learning fine-tuning: a frozen stage, then a fine-tuning stage, resumable.

``train`` reads like the README's training section:

1. prepare the run folder (scan the data or reuse a saved split, save the settings and the split), or
   resume one (:mod:`edgeclf.train.runs`);
2. build the model (ImageNet weights, or the checkpoint a resumed run continues from);
3. cache features: wherever the frozen part of the network sits below a single-tensor cut, its output
   is computed once per image and augmented view by LiteRT (:mod:`edgeclf.train.features`), so that
   only the part above the cut trains in Keras;
4. run each stage (stage 1 trains the head on the frozen backbone; stage 2 unfreezes the top
   ``--unfreeze`` layers at a lower learning rate, batch-norm layers frozen, in inference mode); with
   ``--ema``, validation, checkpoints and the final model use a moving average of the weights
   (:mod:`edgeclf.train.optimizers`);
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
from edgeclf.errors import EdgeclfError
from edgeclf.imageio import RESIZE_IMPLEMENTATION
from edgeclf.log import get_logger
from edgeclf.models.registry import get_backbone
from edgeclf.rundir import RunInfo
from edgeclf.train.field_eval import add_field_figures
from edgeclf.train.runs import Run, check_config, open_cluster_run, prepare_run, resume_run  # noqa: F401 (API)
from edgeclf.train.stages import Stage, lr_at, plan_stages  # noqa: F401  (part of this module's API)
from edgeclf.train.state import EpochRecorder

log = get_logger(__name__)

# progress(description, total) -> a context manager yielding advance(n): how a caller shows long steps
Progress = Callable[[str, int], ContextManager[Callable[[int], None]]]


def no_progress(description: str, total: int) -> ContextManager[Callable[[int], None]]:
    return contextlib.nullcontext(lambda n: None)


def train(cfg: TrainConfig, resume: str | Path | None = None, progress: Progress | None = None) -> RunInfo | None:
    """Train per ``cfg`` (or resume the run folder ``resume``; ``"last"``: the latest under
    ``cfg.project``) and return the finished run (None on a cluster worker that is not the chief)."""
    from edgeclf.train.distribute import make_cluster, parse_tf_config

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _keras_tracebacks()
    cluster = None
    if cfg.distributed or parse_tf_config() is not None:
        if resume is not None:
            raise EdgeclfError("on a cluster, start the same command again on every worker: the run in "
                               "--project/--name resumes by itself (no --resume)")
        cluster = make_cluster(cfg.distributed)  # first: it must exist before TensorFlow runs anything
        run = open_cluster_run(cfg, cluster)
    else:
        run = resume_run(resume, cfg.project) if resume is not None else prepare_run(cfg)
    if run.state.done:
        log.info(f"{run.dir or cfg.name} has already finished training; nothing to resume")
        return rundir.load_run(run.dir) if run.dir else None
    session = _Session(run, cluster or make_cluster(), progress or no_progress)
    try:
        session.build_model()
        session.cache_features()
        for stage_index in range(run.state.stage, len(run.stages)):
            session.run_stage(stage_index)
        report = add_field_figures(session, session.evaluate())  # --add, --compare: the field loop
    except Exception as exc:
        from edgeclf.train.distribute import ClusterError, peer_lost

        if session.cluster.workers > 1 and peer_lost(exc):
            raise ClusterError(f"a worker of the cluster stopped ({type(exc).__name__}) after epoch "
                               f"{run.state.epoch}: start every worker again with the same command, the run "
                               f"resumes from there") from exc
        raise
    session.write_report(report)
    return rundir.load_run(run.dir) if run.dir else None


def _keras_tracebacks() -> None:
    """With ``--debug``, tracebacks keep Keras' own frames (Keras filters them out by default)."""
    from edgeclf import log as edgeclf_log

    if edgeclf_log.settings.debug:
        import keras

        keras.config.disable_traceback_filtering()


@dataclass
class _StageInputs:
    """What one stage fits on: the cached features above its cut (one store per split), or images."""

    cut: object | None  # features.Cut
    stores: dict = field(default_factory=dict)  # split -> cache.FeatureStore


class _Session:
    """The steps of :func:`train` on one run, sharing the model, the cluster and the cached features."""

    def __init__(self, run: Run, cluster, progress: Progress):
        self.run, self.cfg, self.cluster, self.progress = run, run.cfg, cluster, progress
        self.ds = run.data
        self.size, self.k = int(self.cfg.imgsz), len(self.ds.classes)
        # this worker's share of every split (all of it on one machine)
        self.local = {split: self.ds.split(split)[cluster.rank::cluster.workers] for split in ("train", "val", "test")}
        self.y = {split: np.array([s.label for s in samples], dtype=np.int64) for split, samples in self.local.items()}
        self.inputs: dict[int, _StageInputs] = {}
        self.views = 0

    # -- the model ------------------------------------------------------------------------------------
    def build_model(self) -> None:
        """The classifier, with the weights this run continues from (on a cluster: the chief's)."""
        import keras

        from edgeclf.data.pipeline import make_augmenter
        from edgeclf.models.build import HeadSpec, build_classifier
        from edgeclf.train.callbacks import save_model

        cfg, state, chief = self.cfg, self.run.state, self.cluster.is_chief
        keras.utils.set_random_seed(cfg.seed)
        # a new run starts from cfg.weights, a resumed stage from its last epoch, a new stage from the best
        start = None if state.epoch == 0 else (rundir.LAST if state.stage_epoch else rundir.BEST)
        with self.cluster.scope():
            self.model = build_classifier(cfg.model, self.size, self.k,
                                          cfg.weights if start is None and chief else "none",
                                          HeadSpec(cfg.head_units, cfg.dropout))
            if start is not None and chief:
                self.model.load_weights(self.run.dir / start)
        self.cluster.broadcast_weights(self.model)
        self.weights_epoch = {None: 0, rundir.LAST: state.epoch, rundir.BEST: state.best_epoch}[start]
        self.augmenter = (make_augmenter(cfg.flip, cfg.rotation, cfg.zoom, cfg.contrast, cfg.seed)
                          if cfg.augment else None)
        self.recorder = EpochRecorder(self.run.dir, state, cfg.patience, lambda p: save_model(self.model, p),
                                      writes=chief)

    def _load_best(self) -> None:
        best = self.run.state.best_epoch
        if best > 0 and self.weights_epoch != best:
            if self.cluster.is_chief:
                self.model.load_weights(self.run.dir / rundir.BEST)
            self.cluster.broadcast_weights(self.model)
            self.weights_epoch = best

    # -- the feature cache ----------------------------------------------------------------------------
    def cache_features(self) -> None:
        """Features at the cut of every stage still to run (and of the last stage, which evaluates),
        read from the disk cache or computed there: one decode of each image, one LiteRT pass."""
        from edgeclf.models.build import set_trainable
        from edgeclf.train import features

        todo = sorted(set(range(self.run.state.stage, len(self.run.stages))) | {len(self.run.stages) - 1})
        for si in todo:
            set_trainable(self.model, self.run.stages[si].unfreeze)
            cut = features.find_cut(self.model) if self.cfg.cache else None
            self.inputs[si] = _StageInputs(cut if cut is not None and not cut.trivial else None)
        cuts = {c.name(self.model): c for c in (i.cut for i in self.inputs.values()) if c is not None}
        if not cuts:
            return
        self.views = self.cfg.cache_views if self.augmenter is not None else 0
        stores, report = self._cached_features(cuts)
        for inputs in self.inputs.values():
            if inputs.cut is not None:
                name = inputs.cut.name(self.model)
                inputs.stores = {split: stores[(split, name)] for split, c in stores if c == name}
        self.run.state.feature_cache = report.to_dict()
        what = (f"computed {report.rows_computed} rows with {report.engine} in {report.seconds_computing:.0f}s"
                + (f", reused {report.rows_reused}" if report.rows_reused else "")
                if report.rows_computed else f"reused {report.rows_reused} rows, nothing computed")
        log.info(f"feature cache at {', '.join(cuts)} ({1 + self.views} view(s) of train, val clean): {what} "
                 f"[{report.dir}]")

    def _cached_features(self, cuts: dict):
        from edgeclf.data.pipeline import reseed
        from edgeclf.models.build import build_classifier
        from edgeclf.train import cache, features

        cfg = self.cfg
        # LiteRT converts a plain Keras model: on several replicas, a copy outside the strategy
        source = self.model
        if self.cluster.distributed:
            source = build_classifier(cfg.model, self.size, self.k, "none")
            source.set_weights(self.model.get_weights())
        versions = _versions()
        base = {"format": cache.FORMAT, "model": cfg.model, "preprocess": get_backbone(cfg.model).preprocess,
                "imgsz": self.size, "resize": cfg.resize,
                "resize_implementation": RESIZE_IMPLEMENTATION.get(cfg.resize), "versions": versions}
        augment = {"flip": cfg.flip, "rotation": cfg.rotation, "zoom": cfg.zoom, "contrast": cfg.contrast}
        weights = {name: cache.weights_digest(source.layers[:cut.index + 1]) for name, cut in cuts.items()}
        jobs, specs = [], {}
        for split in ("train", "val", "test"):
            samples = self.local[split]
            if split == "test" and not self.ds.test:
                continue
            views = self.views if split == "train" else 0
            digests = [s.sha256 for s in samples]
            if not all(digests):
                digests = cache.file_digests([s.path for s in samples])
            files = {"files": _sha(digests), "images": len(samples), "views": views,
                     "augment": augment if views else None, "seed": cfg.seed if views else None}
            jobs.append(cache.SplitJob(split, [s.path for s in samples], views))
            for name, cut in cuts.items():
                parts = {**base, **files, "cut": name, "cut_index": cut.index, "weights": weights[name]}
                specs[(split, name)] = cache.EntrySpec(parts, tuple(int(d) for d in cut.tensor.shape[1:]),
                                                        len(samples), views)

        def make_engine(names: list[str]):
            import keras

            bottom = keras.Model(source.input, [source.get_layer(n).output for n in names], name="bottom")
            return features.make_engine(bottom)

        augment_fn = features.augmentation(self.augmenter, self.size) if self.views else None

        def batches(paths: list[str], views: int, shard: int):
            if views:
                reseed(self.augmenter, cfg.seed, shard)
            return features.decoded_batches(paths, self.size, cfg.resize, views, augment_fn if views else None, 64)

        total = sum(len(j.paths) * (1 + j.views) for j in jobs)
        with self.progress("caching features", total) as advance:
            return cache.ensure(cache.resolve_dir(cfg.cache_dir), jobs, specs, make_engine, batches, advance)

    # -- the stages -----------------------------------------------------------------------------------
    def _fit_model(self, stage_index: int):
        """The model a stage fits: the top above its cut, or the whole classifier."""
        from edgeclf.train import features

        cut = self.inputs[stage_index].cut
        if cut is None:
            return self.model
        with self.cluster.scope():  # a model made in the strategy's scope trains under it
            return features.split_model(self.model, cut)[1]

    def _plan(self):
        from edgeclf.train.inputs import Plan

        c = self.cluster
        if c.workers == 1:  # Keras splits each global batch over the local replicas itself
            return Plan(self.cfg.batch, 1, 1, 1)
        return Plan(self.cfg.batch, c.replicas, c.local_replicas, c.workers)

    def _datasets(self, stage_index: int, class_weight):
        """(train, validation) inputs of a stage and fit's step arguments, for this worker."""
        from edgeclf.train import inputs as stage_inputs

        cfg, plan, inputs = self.cfg, self._plan(), self.inputs[stage_index]
        n_train = len(self.ds.train) * (1 + (self.views if inputs.cut is not None else 0))
        steps = plan.steps(n_train)
        val_share = -(-len(self.ds.val) // self.cluster.workers)  # the largest worker's share
        val_steps = max(1, -(-val_share // (plan.replica_batch * plan.local_replicas)))
        if inputs.cut is not None:
            make_train = lambda: stage_inputs.feature_dataset(  # noqa: E731
                inputs.stores["train"], self.y["train"], self.k, plan, steps, True, cfg.seed + stage_index,
                class_weight)
            make_val = lambda: stage_inputs.feature_dataset(  # noqa: E731
                inputs.stores["val"], self.y["val"], self.k, plan, val_steps, False, 0)
        else:
            make_train = lambda: stage_inputs.image_batches(  # noqa: E731
                self.local["train"], self.size, self.k, plan, steps, cfg.resize, True, cfg.seed + stage_index,
                self.augmenter, class_weight)
            make_val = lambda: stage_inputs.image_batches(  # noqa: E731
                self.local["val"], self.size, self.k, plan, val_steps, cfg.resize, False, 0)
        if self.cluster.workers == 1:
            return dict(x=make_train(), validation_data=make_val())
        strategy = self.cluster.strategy
        return dict(x=strategy.distribute_datasets_from_function(lambda ctx: make_train()),
                    validation_data=strategy.distribute_datasets_from_function(lambda ctx: make_val()),
                    steps_per_epoch=steps, validation_steps=val_steps)

    def run_stage(self, stage_index: int) -> None:
        """Fit one stage from where it stands, then load the best weights for what follows."""
        import keras

        from edgeclf.models.build import set_trainable
        from edgeclf.train.callbacks import EpochCheckpoint
        from edgeclf.train.optimizers import make_optimizer

        cfg, state, stage = self.cfg, self.run.state, self.run.stages[stage_index]
        if not state.stage_finished(stage_index, stage):
            trainable = set_trainable(self.model, stage.unfreeze)
            inputs = self.inputs[stage_index]
            fit_model = self._fit_model(stage_index)
            log.info(f"stage {stage_index + 1}/{len(self.run.stages)}: {stage.name} — {stage.epochs} epochs, "
                     f"lr {stage.lr:g}, {trainable} backbone layers trainable"
                     + (f", training above {inputs.cut.name(self.model)} on cached features"
                        if inputs.cut is not None else ""))
            class_weight = _class_weights(np.array([s.label for s in self.ds.train]), self.k) \
                if cfg.class_weights == "auto" else None
            data = self._datasets(stage_index, class_weight)
            # On a cluster, validation batches are padded with weight-0 rows: the metrics must weigh rows
            # (weighted_metrics) and the loss divide by the weights, not by the batch size.
            padded = self.cluster.workers > 1
            with self.cluster.scope():
                optimizer = make_optimizer(cfg.optimizer, stage.lr, cfg.ema)
                loss = keras.losses.CategoricalCrossentropy(
                    label_smoothing=cfg.label_smoothing,
                    reduction="mean_with_sample_weight" if padded else "sum_over_batch_size")
                fit_model.compile(optimizer=optimizer, loss=loss, metrics=None if padded else ["accuracy"],
                                  weighted_metrics=["accuracy"] if padded else None)
            # with --ema, the averaged weights are swapped in for validation and the checkpoints (so "best" is
            # the best average, and the model continues from it), and out again for the next epoch's training
            callbacks = ([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if cfg.ema else []) \
                + [EpochCheckpoint(self.recorder, stage_index, stage)]
            if cfg.schedule == "cosine":
                callbacks.append(keras.callbacks.LearningRateScheduler(
                    lambda e, _lr: lr_at(e, stage, cfg.warmup_epochs)))
            else:
                callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", factor=0.3, patience=2,
                                                                   min_lr=stage.lr * 1e-3))
            fit_model.fit(epochs=stage.epochs, initial_epoch=state.start_epoch(stage_index), callbacks=callbacks,
                          verbose=0, **data)
            self.weights_epoch = state.epoch
        self._load_best()  # the next stage starts from the best weights so far
        self.recorder.end_stage(stage_index)

    # -- evaluation and report ------------------------------------------------------------------------
    def _counts(self, split: str) -> tuple[np.ndarray, int, np.ndarray]:
        """Confusion matrix and top-5 hits of the best model on a split, through the last stage's inputs,
        summed over the cluster's workers, and every image's probabilities (in the split's order)."""
        import tensorflow as tf

        from edgeclf.train import inputs as stage_inputs

        last = len(self.run.stages) - 1
        inputs, model = self.inputs[last], self._fit_model(last)
        predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        plan = stage_inputs.Plan(256, 1, 1, 1)
        if inputs.cut is not None:
            data = stage_inputs.feature_dataset(inputs.stores[split], self.y[split], self.k, plan, 0, False, 0)
        else:
            data = stage_inputs.image_batches(self.local[split], self.size, self.k, plan, 0, self.cfg.resize,
                                              False, 0, cache_budget=0)
        cm, top5, local = np.zeros((self.k, self.k), np.int64), 0, []
        for x, y, _ in data:
            probs = predict(x).numpy()
            truth = y.numpy().argmax(axis=1)
            cm += metrics.confusion(truth, probs.argmax(axis=1), self.k)
            top5 += metrics.top5_hits(probs, truth)
            local.append(probs)
        counts = self.cluster.reduce(np.concatenate([cm.ravel(), [top5]]), "SUM")
        # each worker holds split[rank::workers]: scatter into the whole split, and sum
        everyone = np.zeros((len(self.ds.split(split)), self.k), np.float32)
        everyone[self.cluster.rank::self.cluster.workers] = np.concatenate(local) if local else everyone[:0]
        everyone = self.cluster.reduce(everyone, "SUM").astype(np.float32)
        return counts[:-1].reshape(self.k, self.k), int(counts[-1]), everyone

    def evaluate(self) -> dict:
        """``report.json``'s content: the best weights on the validation (and test) split."""
        self._load_best()
        state = self.run.state
        cm, top5, self.val_probs = self._counts("val")
        rep = metrics.report_from_counts(cm, self.ds.classes, top5)
        rep["calibration"], self.val_probs = _calibration(self.val_probs, [s.label for s in self.ds.val], self.cfg.seed)
        rep["wrong"] = int(cm.sum() - np.trace(cm))
        rep["predictions"] = rundir.PREDICTIONS
        rep.update(model=self.cfg.model, imgsz=self.size, best_epoch=state.best_epoch, epochs_run=state.epoch,
                   train_seconds=round(time.time() - self.recorder.t_start, 1),
                   train_images=len(self.ds.train), holdout_images=len(self.ds.holdout))
        if self.ds.test:
            cm, top5, _ = self._counts("test")
            rep["test"] = metrics.report_from_counts(cm, self.ds.classes, top5)
        if state.feature_cache:
            rep["feature_cache"] = state.feature_cache
        if self.cluster.workers > 1:
            from edgeclf.train.cache import weights_digest

            rep["cluster"] = {"workers": self.cluster.workers, "replicas": self.cluster.replicas}
            digest = weights_digest(self.model.layers)
            self.cluster.same_everywhere(int(digest[:12], 16), "the final weights")
            log.info(f"{self.cluster.task}: final weights sha256 {digest}, the same on every worker")
        return rep

    def write_report(self, rep: dict) -> None:
        from edgeclf.train import report as reporting

        run_dir, state = self.run.dir, self.run.state
        state.done, state.train_seconds = True, rep["train_seconds"]
        extra = f", top-5 {rep['top5']:.2%}" if "top5" in rep else ""
        log.info(f"val top-1 {rep['top1']:.2%}{extra}, macro-F1 {rep['macro_f1']:.3f} (best epoch "
                 f"{rep['best_epoch']} of {rep['epochs_run']}), {rep['train_seconds']:.0f}s of training")
        if not self.cluster.is_chief:
            return
        fsutil.write_json(run_dir / rundir.REPORT, rep)
        rundir.write_predictions(run_dir, self.ds.val, self.ds.root, self.val_probs, self.ds.classes)
        cm = np.array(rep["confusion_matrix"])
        reporting.plot_confusion(cm, self.ds.classes, run_dir / "confusion_matrix.png", normalize=False)
        reporting.plot_confusion(cm, self.ds.classes, run_dir / "confusion_matrix_normalized.png", normalize=True)
        reporting.plot_results(run_dir / rundir.RESULTS, run_dir / "results.png")
        state.save(run_dir)
        from edgeclf.page import try_build

        try_build(run_dir)


def _calibration(probs: np.ndarray, labels: list[int], seed: int) -> tuple[dict, np.ndarray]:
    """Temperature scaling fitted on the validation images (:mod:`edgeclf.temperature`): report.json's
    ``calibration`` and the scores as the exported model will give them (export folds the temperature in).
    No answer changes. Not fitted when validation has too few images, or no wrong answer to learn from (then
    the likelihood would only grow by making the model ever more sure of itself)."""
    from edgeclf import temperature

    labels = np.asarray(labels)
    wrong = int((probs.argmax(axis=1) != labels).sum())
    if len(labels) < temperature.MIN_IMAGES or wrong == 0:
        why = (f"{len(labels)} validation images (under {temperature.MIN_IMAGES})" if len(labels) < temperature.MIN_IMAGES
               else f"no wrong answer among the {len(labels)} validation images")
        return {"temperature": 1.0, "fitted_on": None, "note": f"not fitted: {why}",
                "ece_before": round(temperature.ece(probs, labels), 4)}, probs
    cal = temperature.calibrate(probs, labels, "validation", seed=seed)
    log.info(f"scores calibrated: temperature {cal['temperature']:.3g} fitted on {len(labels)} validation images, "
             f"expected calibration error {cal['ece_before']:.3f} -> {cal['ece_after']:.3f} (cross-fitted)")
    return cal, temperature.scale(probs, cal["temperature"]).astype(np.float32)


def _sha(items: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def _versions() -> dict:
    """Library versions the cached numbers depend on (augmentation and conversion may change)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _class_weights(y_train: np.ndarray, k: int) -> dict[int, float]:
    counts = np.bincount(y_train, minlength=k).astype(float)
    return {i: float(counts.sum() / (k * c)) if c else 0.0 for i, c in enumerate(counts)}
