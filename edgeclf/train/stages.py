"""The training plan: which stages run, how long, at which learning rate. Plain Python (no TensorFlow).

Stage 1 trains the head on the frozen backbone (``frozen``); stage 2 unfreezes the top ``--unfreeze``
backbone layers at ``--fine-tune-lr`` (``fine_tune``). A backbone without ImageNet weights to start
from (the plain CNN) trains every layer in one ``scratch`` stage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from edgeclf.config import TrainConfig
from edgeclf.models.registry import get_backbone


@dataclass(frozen=True)
class Stage:
    name: str  # frozen | fine_tune | scratch
    epochs: int
    lr: float
    unfreeze: int | str  # top backbone layers trained, or "all"


def plan_stages(cfg: TrainConfig) -> list[Stage]:
    backbone = get_backbone(cfg.model)
    if backbone.constructor is None:  # trained from scratch: one stage, every layer
        return [Stage("scratch", cfg.epochs, cfg.lr, "all")]
    stages = [Stage("frozen", cfg.epochs, cfg.lr, 0)]
    if cfg.fine_tune_epochs > 0:
        unfreeze = "all" if str(cfg.unfreeze) == "all" else int(cfg.unfreeze)
        stages.append(Stage("fine_tune", cfg.fine_tune_epochs, cfg.fine_tune_lr, unfreeze))
    return stages


def lr_at(epoch: int, stage: Stage, warmup_epochs: int) -> float:
    """Learning rate of ``epoch`` (0-based, within ``stage``): a linear warmup, then cosine decay to 1 %.

    A function of the epoch only, so a resumed stage continues the same curve.
    """
    warm = min(warmup_epochs, max(stage.epochs - 1, 0))
    if epoch < warm:
        return stage.lr * (epoch + 1) / (warm + 1)
    span = max(stage.epochs - warm, 1)
    return stage.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (epoch - warm) / span)))
