"""`edgeclf bench`: parse options, call edgeclf.bench.core.run_bench, exit with its code."""
from __future__ import annotations

import sys

import click

from edgeclf.bench.core import DEFAULT_LOG


@click.command("bench")
@click.argument("exports", metavar="EXPORT_DIR [EXPORT_DIR ...]", nargs=-1, required=True,
                type=click.Path(path_type=str))
@click.option("--data", required=True, type=click.Path(path_type=str),
              help="Photo folder (as for train): its validation split is measured.")
@click.option("--out", type=click.Path(path_type=str), default=None,
              help="Output folder for bench.csv/json/md/png. Default: runs/bench/exp (exp2, exp3… when taken).")
@click.option("--runs", type=int, default=100, show_default=True, help="Timed batch-1 runs per model.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs before them.")
@click.option("--threads", default=None,
              help="CPU threads, or a comma list to sweep (e.g. 1,2,4). Default: every usable core.")
@click.option("--backends", default=None,
              help="Comma list of litert, onnxruntime, opencv. Default: every installed backend that applies "
                   "(OpenCV DNN for float ONNX only).")
@click.option("--min-top1", type=float, default=None,
              help="Accuracy floor (fraction, e.g. 0.9): exit 3 when any model is below it or fails (CI gate).")
@click.option("--log", type=click.Path(path_type=str), default=str(DEFAULT_LOG), show_default=True,
              help="Append one JSON line per bench run here ('' for none).")
def command(exports, data, out, runs, warmup, threads, backends, min_top1, log) -> None:
    """Measure every model of one or more export folders on the validation split of DATA, side by side,
    through the runtime backends `edgeclf run` uses: size, load time, top-1 (top-5 with more than five
    classes), macro-F1, drop against the float model and agreement with it, batch-1 latency (mean,
    p50/p90/p99, std, FPS) and the peak memory of a process running only that model.

    Several export folders (e.g. one per backbone) give one combined table.
    Writes bench.csv, bench.json, bench.md and bench.png (with matplotlib) in --out.

    \b
    Exit codes:
      0  measured (failed models, if any, are listed with their reason)
      2  bad input (one-line error)
      3  with --min-top1: a model is below the floor or failed
    """
    from edgeclf.bench.core import BenchOptions, parse_backends, parse_threads, run_bench

    result = run_bench(BenchOptions(
        exports=list(exports), data=data, out=out, runs=runs, warmup=warmup, threads=parse_threads(threads),
        backends=parse_backends(backends), min_top1=min_top1, log=log or None,
        command="edgeclf bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else ""))
    sys.exit(result.exit_code)
