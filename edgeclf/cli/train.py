from __future__ import annotations

import click

from edgeclf.models.registry import BACKBONES


@click.command("train")
@click.argument("data", required=False, type=click.Path(path_type=str))
@click.option("--model", type=click.Choice(list(BACKBONES)), default="mobilenet_v2", show_default=True,
              help="Backbone (simple_cnn: the from-scratch baseline).")
@click.option("--imgsz", type=int, default=None, help="Input side in pixels [default: the backbone's].")
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet (from $EDGECLF_WEIGHTS_DIR, Keras' cache, or a download), none, or a weights file.")
@click.option("--epochs", type=int, default=15, show_default=True, help="Stage 1: backbone frozen.")
@click.option("--fine-tune-epochs", type=int, default=8, show_default=True, help="Stage 2: top layers unfrozen (0: skip).")
@click.option("--unfreeze", default="8", show_default=True,
              help="Top weighted backbone layers (batch-norm included) trained in stage 2, or 'all'. More needs a GPU.")
@click.option("--batch", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Stage 1 learning rate.")
@click.option("--fine-tune-lr", type=float, default=1e-4, show_default=True, help="Stage 2 learning rate.")
@click.option("--optimizer", type=click.Choice(["adam", "rmsprop"]), default="adam", show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "plateau"]), default="cosine", show_default=True,
              help="cosine with warmup, or reduce-on-plateau.")
@click.option("--warmup-epochs", type=int, default=1, show_default=True)
@click.option("--label-smoothing", type=float, default=0.1, show_default=True)
@click.option("--class-weights", type=click.Choice(["none", "auto"]), default="none", show_default=True)
@click.option("--patience", type=int, default=5, show_default=True, help="Early stopping: epochs without gain.")
@click.option("--head-units", type=int, default=0, show_default=True, help="Hidden dense layer in the head (0: none).")
@click.option("--dropout", type=float, default=0.2, show_default=True)
@click.option("--augment/--no-augment", default=True, show_default=True)
@click.option("--flip/--no-flip", default=True, show_default=True, help="Random horizontal flip.")
@click.option("--rotation", type=float, default=0.05, show_default=True, help="Random rotation, fraction of a turn.")
@click.option("--zoom", type=float, default=0.1, show_default=True)
@click.option("--contrast", type=float, default=0.1, show_default=True)
@click.option("--cache/--no-cache", default=True, show_default=True,
              help="Train above the frozen layers on features cached once (fast) instead of a full pass per epoch.")
@click.option("--cache-views", type=int, default=2, show_default=True,
              help="Augmented views of each training image in the feature cache.")
@click.option("--val-split", type=float, default=0.2, show_default=True, help="Validation share when DATA is not split.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--project", default="runs/train", show_default=True)
@click.option("--name", default="exp", show_default=True, help="Run folder name (exp2, exp3… when taken).")
@click.option("--resume", "resume", is_flag=False, flag_value="last", default=None, metavar="[RUN_DIR]",
              help="Continue a killed run from its last checkpoint, same settings (alone: the latest run).")
def command(data, resume, **opts) -> None:
    """Fine-tune an ImageNet backbone on DATA (class folders, split into train/ and val/ or not)."""
    from edgeclf import log
    from edgeclf.config import TrainConfig
    from edgeclf.errors import EdgeclfError
    from edgeclf.train.trainer import train

    if resume is None and not data:
        raise EdgeclfError("give a DATA folder to train on (or --resume RUN_DIR)")
    opts["unfreeze"] = str(opts["unfreeze"])
    if opts["unfreeze"] != "all" and not opts["unfreeze"].isdigit():
        raise EdgeclfError(f"--unfreeze takes a number of layers or 'all' (got {opts['unfreeze']})")
    cfg = TrainConfig(data=data or "", **opts)
    log.quiet_native_stderr()  # before TensorFlow is imported: its C++ start-up chatter
    train(cfg, resume=resume)
