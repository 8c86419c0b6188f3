"""The Keras callback of a training stage. Imports Keras: only the training path imports this module."""
from __future__ import annotations

import time
from pathlib import Path

import keras

from edgeclf import fsutil
from edgeclf.log import get_logger
from edgeclf.train.stages import Stage
from edgeclf.train.state import EpochRecorder

log = get_logger(__name__)


def save_model(model, path: Path) -> None:
    """``model.save`` to ``path`` atomically (a kill never leaves a half-written ``.keras``)."""
    with fsutil.atomic_path(path) as tmp:
        model.save(tmp)


class EpochCheckpoint(keras.callbacks.Callback):
    """After each epoch: checkpoints, ``results.csv``, ``state.json``, early stopping, one log line.

    The model being fit may be only the top of the classifier, above the feature-cache cut; the
    recorder saves the whole classifier.
    """

    def __init__(self, recorder: EpochRecorder, stage_index: int, stage: Stage):
        super().__init__()
        self.recorder, self.stage_index, self.stage = recorder, stage_index, stage
        self._t0 = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        seconds = time.time() - self._t0
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        outcome = self.recorder.end_epoch(self.stage_index, self.stage, epoch + 1, logs, lr, seconds)
        if outcome.stop:
            self.model.stop_training = True
        log.info(f"{self.stage.name:>9} {epoch + 1:>3}/{self.stage.epochs:<3} loss {logs.get('loss', 0):.4f} "
                 f"acc {logs.get('accuracy', 0):.4f} | val loss {logs.get('val_loss', 0):.4f} "
                 f"acc {float(logs.get('val_accuracy', 0)):.4f} | lr {lr:.2g} | {seconds:.1f}s"
                 + (" *" if outcome.improved else "") + (" (early stop)" if outcome.stop else ""))
