from __future__ import annotations

import shlex
import sys

import click

from edgeclf.config import default
from edgeclf.sweep.options import SweepOptions

d = lambda name: default(SweepOptions, name)  # noqa: E731


@click.command("sweep")
@click.argument("data", required=False, type=click.Path(path_type=str))
@click.option("--models", default=",".join(d("models")), show_default=True,
              help="Backbones to compare, comma-separated (edgeclf train --model names).")
@click.option("--imgsz", "sizes", default=",".join(map(str, d("sizes"))), show_default=True,
              help="Input sizes to compare, comma-separated.")
@click.option("--remote", "remotes", multiple=True, metavar="HOST",
              help="Also bench on this device over SSH, as edgeclf bench --remote (repeatable). The choice is made "
                   "for each remote device.")
@click.option("--max-latency", type=float, default=None, metavar="MS",
              help="Budget: p50 latency in ms, judged on the upper end of its 95% confidence interval (the "
                   "slowest run when --runs is under 6).")
@click.option("--max-size", type=float, default=None, metavar="MB", help="Budget: model file size in MB.")
@click.option("--max-ram", type=float, default=None, metavar="MIB", help="Budget: peak RAM of the runtime with the "
                                                                        "model loaded, MiB.")
@click.option("--epochs", type=int, default=None, help="edgeclf train --epochs (default: train's).")
@click.option("--fine-tune-epochs", type=int, default=None, help="edgeclf train --fine-tune-epochs.")
@click.option("--weights", default=None, help="edgeclf train --weights (imagenet, none or a file).")
@click.option("--formats", default=None, help="edgeclf export --formats (default: every format).")
@click.option("--max-drop", type=float, default=None, help="edgeclf export --max-drop (the int8 budget, points).")
@click.option("--runs", type=int, default=None, help="edgeclf bench --runs.")
@click.option("--warmup", type=int, default=None, help="edgeclf bench --warmup.")
@click.option("--max-images", type=int, default=None, help="edgeclf bench --max-images (a stratified subset).")
@click.option("--train-args", default="", help='Any other train options, e.g. "--holdout 0.2 --batch 64".')
@click.option("--export-args", default="", help="Any other export options.")
@click.option("--bench-args", default="", help="Any other bench options.")
@click.option("--remote-bench-args", default=None,
              help='The bench options for the --remote devices, when they differ from here, e.g. "--max-images '
                   '200 --runs 5 --formats tflite-int8" for an emulated board (its latency is not used).')
@click.option("--retry-failed", is_flag=True, help="With --resume: run the failed candidates again (e.g. once the "
                                                   "missing weights are in place).")
@click.option("--project", default=d("project"), show_default=True)
@click.option("--name", default=d("name"), show_default=True, help="Sweep folder name (exp2, exp3… when taken).")
@click.option("--resume", type=click.Path(path_type=str), default=None, metavar="SWEEP_DIR",
              help="Continue a sweep a kill interrupted: finished stages are not run again. A budget given "
                   "here (--max-latency/--max-size/--max-ram) replaces the saved one and judges it anew.")
def command(data, models, sizes, remotes, max_latency, max_size, max_ram, epochs, fine_tune_epochs, weights,
            formats, max_drop, runs, warmup, max_images, train_args, export_args, bench_args, remote_bench_args,
            retry_failed, project, name, resume) -> None:
    """Choose the model for the device: train every backbone x input size on DATA, export each (int8 within
    the accuracy budget), bench every model here and on each --remote device, and write
    runs/sweep/NAME/sweep.csv, sweep.json, sweep.md and a plot per device (top-1 against p50 and size, the
    accuracy/latency front marked).

    With a budget it names, per device, the most accurate model that meets it there, the export folder to
    deploy and the edgeclf run command. On an emulated device (scripts/arm-device.sh) top-1 is the device's
    and latency this machine's.

    \b
    Exit codes:
      0  done (failed candidates, if any, are rows with their reason)
      2  bad input (one-line error)
      3  with a budget: nothing meets it on a device (the closest is named)
      4  no candidate could be measured
    """
    from edgeclf.errors import EdgeclfError
    from edgeclf.log import table_console
    from edgeclf.sweep.core import run_sweep
    from edgeclf.sweep.options import parse_list
    from edgeclf.sweep.report import print_result

    budget = {"max_latency": max_latency, "max_size": max_size, "max_ram": max_ram}
    if not resume and not data:
        raise EdgeclfError("give DATA (a photo folder), or --resume SWEEP_DIR")
    opts = SweepOptions(data=data or "", models=parse_list(models, "--models"), sizes=parse_list(sizes, "--imgsz", int),
                        project=project, name=name, remotes=list(remotes), epochs=epochs,
                        fine_tune_epochs=fine_tune_epochs, weights=weights, formats=formats, max_drop=max_drop,
                        runs=runs, warmup=warmup, max_images=max_images, train_args=shlex.split(train_args),
                        export_args=shlex.split(export_args), bench_args=shlex.split(bench_args),
                        remote_bench_args=shlex.split(remote_bench_args) if remote_bench_args is not None else None,
                        **budget)
    console = table_console(140)
    result = run_sweep(opts, resume, console, budget_override=budget if resume else None,
                       retry_failed=retry_failed)
    print_result(result, console)
    sys.exit(result.exit_code)
