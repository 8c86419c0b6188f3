"""`edgeclf train`: parse options (defaults from TrainConfig), call edgeclf.train.trainer.train, print the summary."""
from __future__ import annotations

import contextlib
from functools import partial

import click

from edgeclf.config import TrainConfig, default
from edgeclf.models.registry import BACKBONES

d = partial(default, TrainConfig)


@click.command("train")
@click.argument("data", required=False, type=click.Path(path_type=str))
@click.option("--model", type=click.Choice(list(BACKBONES)), default=d("model"), show_default=True,
              help="Backbone (simple_cnn: the from-scratch baseline).")
@click.option("--imgsz", type=int, default=d("imgsz"), help="Input side in pixels [default: the backbone's].")
@click.option("--weights", default=d("weights"), show_default=True,
              help="imagenet (from $EDGECLF_WEIGHTS_DIR, Keras' cache, or a download), none, or a weights file.")
@click.option("--epochs", type=int, default=d("epochs"), show_default=True, help="Stage 1: backbone frozen.")
@click.option("--fine-tune-epochs", type=int, default=d("fine_tune_epochs"), show_default=True,
              help="Stage 2: top layers unfrozen (0: skip).")
@click.option("--unfreeze", default=d("unfreeze"), show_default=True,
              help="Top weighted backbone layers (batch-norm included) trained in stage 2, or 'all' (38: MobileNetV2's "
                   "last six blocks and its last 1x1 convolution). More trains above a lower cut: slower epochs.")
@click.option("--batch", type=int, default=d("batch"), show_default=True)
@click.option("--lr", type=float, default=d("lr"), show_default=True, help="Stage 1 learning rate.")
@click.option("--fine-tune-lr", type=float, default=d("fine_tune_lr"), show_default=True, help="Stage 2 learning rate.")
@click.option("--optimizer", type=click.Choice(["adam", "rmsprop"]), default=d("optimizer"), show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "plateau"]), default=d("schedule"), show_default=True,
              help="cosine with warmup, or reduce-on-plateau.")
@click.option("--warmup-epochs", type=int, default=d("warmup_epochs"), show_default=True)
@click.option("--label-smoothing", type=float, default=d("label_smoothing"), show_default=True)
@click.option("--ema", type=click.FloatRange(0, 0.9999), default=d("ema"), show_default=True,
              help="Keep an exponential moving average of the weights with this momentum per step (warmed up over "
                   "the first steps): validation, checkpoints and the final model use the average. 0: off.")
@click.option("--class-weights", type=click.Choice(["none", "auto"]), default=d("class_weights"), show_default=True)
@click.option("--patience", type=int, default=d("patience"), show_default=True,
              help="Early stopping: epochs without gain.")
@click.option("--head-units", type=int, default=d("head_units"), show_default=True,
              help="Hidden dense layer in the head (0: none).")
@click.option("--dropout", type=float, default=d("dropout"), show_default=True)
@click.option("--augment/--no-augment", default=d("augment"), show_default=True)
@click.option("--flip/--no-flip", default=d("flip"), show_default=True, help="Random horizontal flip.")
@click.option("--rotation", type=float, default=d("rotation"), show_default=True,
              help="Random rotation, fraction of a turn.")
@click.option("--zoom", type=float, default=d("zoom"), show_default=True)
@click.option("--contrast", type=float, default=d("contrast"), show_default=True)
@click.option("--cache/--no-cache", default=d("cache"), show_default=True,
              help="Train above the frozen layers on features cached once (fast) instead of a full pass per epoch.")
@click.option("--cache-views", type=click.IntRange(0), default=d("cache_views"), show_default=True,
              help="Augmented views of each training image in the feature cache.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=str), default=d("cache_dir"),
              help="Feature cache folder, reused by later runs and --resume "
                   "[default: $EDGECLF_CACHE_DIR, else ~/.cache/edgeclf].")
@click.option("--clear-cache", is_flag=True, help="Delete the feature cache folder first (alone: only that).")
@click.option("--val-split", type=float, default=d("val_split"), show_default=True,
              help="Validation share when DATA is not split.")
@click.option("--holdout", type=float, default=d("holdout"), show_default=True,
              help="Share of the training images never trained on, for export's int8 search to judge on (0: "
                   "none, export judges on random views of training images, as good a judge, measured).")
@click.option("--seed", type=int, default=d("seed"), show_default=True)
@click.option("--split-from", type=click.Path(path_type=str), default=d("split_from"),
              help="Train on the exact train/holdout/val split of this run folder (or split.json), without "
                   "scanning DATA again: models compared on the very same images (edgeclf sweep uses it).")
@click.option("--add", "add", multiple=True, type=click.Path(file_okay=False, path_type=str), metavar="DIR",
              help="Labelled field images to train on (repeatable): DIR holds the frames and labels.csv (file,label; "
                   "an empty label discards the frame), as edgeclf run --collect and edgeclf label write them. They "
                   "join the training split, never the validation split; --field-val of them are held out.")
@click.option("--field-val", type=float, default=d("field_val"), show_default=True, metavar="FRACTION",
              help="Stratified share of the --add images held out as the field validation set: report.json and the "
                   "page give top-1 on it beside the validation top-1 (0: none).")
@click.option("--compare", type=click.Path(file_okay=False, path_type=str), default=d("compare"), metavar="RUN",
              help="A previous run (the deployed model): its model is judged on the same field validation images "
                   "and its validation top-1 set beside this run's, with the deltas.")
@click.option("--project", default=d("project"), show_default=True)
@click.option("--name", default=d("name"), show_default=True, help="Run folder name (exp2, exp3… when taken).")
@click.option("--resume", "resume", is_flag=False, flag_value="last", default=None, metavar="[RUN_DIR]",
              help="Continue a killed run from its last checkpoint, same settings (alone: the latest run).")
@click.option("--distributed", is_flag=True, default=d("distributed"),
              help="Train on the cluster TF_CONFIG describes (MultiWorkerMirroredStrategy; automatic when "
                   "TF_CONFIG names several tasks). Run the same command on every host.")
def command(data, resume, clear_cache, **opts) -> None:
    """Fine-tune an ImageNet backbone on DATA (class folders, split into train/ and val/ or not)."""
    import json

    from edgeclf import log, rundir
    from edgeclf.errors import EdgeclfError
    from edgeclf.train.report import print_summary
    from edgeclf.train.runs import check_config
    from edgeclf.train.trainer import train

    if clear_cache:
        from edgeclf.train.cache import clear

        folder, freed = clear(opts["cache_dir"])
        click.echo(f"deleted the feature cache {folder} ({freed / 2**20:.0f} MiB)" if freed
                   else f"no feature cache at {folder}", err=True)
        if resume is None and not data:
            return
    if resume is None and not data:
        raise EdgeclfError("give a DATA folder to train on (or --resume RUN_DIR)")
    cfg = TrainConfig(data=data or "", **{**opts, "unfreeze": str(opts["unfreeze"]), "add": list(opts["add"])})
    if resume is None:
        check_config(cfg)
    elif cfg.add or cfg.compare:
        from edgeclf.train.field_eval import check_resume

        check_resume(cfg, resume)
    log.quiet_native_stderr()  # before TensorFlow is imported: its C++ start-up chatter
    info = train(cfg, resume=resume, progress=_progress_bar)
    if info is None:  # a cluster worker: the chief has the run folder
        return
    report = json.loads((info.dir / rundir.REPORT).read_text(encoding="utf-8"))
    print_summary(report, info.classes, info.dir, log.table_console(soft_wrap=True))


@contextlib.contextmanager
def _progress_bar(description: str, total: int):
    """A transient progress bar on stderr (nothing when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
