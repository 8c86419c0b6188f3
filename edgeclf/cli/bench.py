"""`edgeclf bench`: parse options, call edgeclf.bench.core.run_bench, print its table, exit with its code."""
from __future__ import annotations

import sys

import click

from edgeclf.bench.core import BenchOptions
from edgeclf.config import default


@click.command("bench")
@click.argument("exports", metavar="EXPORT_DIR [EXPORT_DIR ...]", nargs=-1, required=True,
                type=click.Path(path_type=str))
@click.option("--data", required=True, type=click.Path(path_type=str),
              help="Photo folder (as for train): its validation split is measured.")
@click.option("--out", type=click.Path(path_type=str), default=None,
              help="Output folder for bench.csv/json/md/png. Default: runs/bench/exp (exp2, exp3… when taken).")
@click.option("--runs", type=int, default=default(BenchOptions, "runs"), show_default=True,
              help="Timed batch-1 runs per model.")
@click.option("--warmup", type=int, default=default(BenchOptions, "warmup"), show_default=True,
              help="Untimed runs before them.")
@click.option("--threads", default=None,
              help="CPU threads, or a comma list to sweep (e.g. 1,2,4). Default: every usable core of each device.")
@click.option("--backends", default=None,
              help="Comma list of litert, onnxruntime, opencv. Default: every installed backend that applies "
                   "(OpenCV DNN for float ONNX only).")
@click.option("--formats", default=None,
              help="Comma list of the models to measure, e.g. tflite-int8,onnx-int8. Default: every one.")
@click.option("--min-top1", type=float, default=None,
              help="Accuracy floor (fraction, e.g. 0.9): exit 3 when any model is below it or fails (CI gate).")
@click.option("--log", type=click.Path(path_type=str), default=str(default(BenchOptions, "log")), show_default=True,
              help="Append one JSON line per bench run here ('' for none).")
@click.option("--remote", "remotes", multiple=True, metavar="[USER@]HOST[:PORT]",
              help="Also measure on this device over SSH (repeatable: one set of rows per device). The device "
                   "needs Python with edgeclf[runtime]; the models and the decoded validation images are sent "
                   "to a temporary folder there, removed afterwards.")
@click.option("--remote-python", default=default(BenchOptions, "remote_python"), show_default=True,
              help="The interpreter on the device(s) that has edgeclf[runtime], e.g. '~/edgeclf-env/bin/python' "
                   "(quoted: ~ is the device's home).")
@click.option("--no-local", is_flag=True, help="Measure on the --remote devices only.")
@click.option("--ssh-option", "ssh_options", multiple=True, metavar="KEY=VALUE",
              help="Extra OpenSSH option for --remote (repeatable), e.g. IdentityFile=~/.ssh/pi_key.")
@click.option("--ssh-config", type=click.Path(path_type=str), default=default(BenchOptions, "ssh_config"),
              help="OpenSSH config file to use instead of ~/.ssh/config (ssh -F).")
@click.option("--max-images", type=int, default=None,
              help="Measure N validation images, a stratified, seeded subset (the same on every device and run): "
                   "for emulated devices and slow links. The report says how many of how many.")
@click.option("--decode-on", type=click.Choice(["host", "device"]), default=default(BenchOptions, "decode_on"),
              show_default=True,
              help="device: each --remote device also decodes and resizes the validation photos itself (the files "
                   "are sent), as its camera frames will be; the report adds that top-1 and compares the decoded "
                   "bytes with this machine's.")
def command(exports, data, out, runs, warmup, threads, backends, formats, min_top1, log, remotes, remote_python,
            no_local, ssh_options, ssh_config, max_images, decode_on) -> None:
    """Measure every model of one or more export folders on the validation split of DATA, side by side,
    through the runtime backends `edgeclf run` uses: size, load time and cold start, top-1 (top-5 with
    more than five classes), macro-F1, drop against the float model, agreement with it and an exact
    McNemar test, the worst class's drop, batch-1 latency (mean, p50 with its 95 % confidence interval,
    p90/p99, std, FPS) and the peak memory of a process running only that model.

    Several export folders (e.g. one per backbone) give one combined table. With --remote, the same is
    measured on a Raspberry Pi or Jetson over SSH, side by side with this machine, each device with its
    fingerprint (CPU, ISA features that decide int8 speed, memory, OS, runtimes, governor, temperature).
    No board yet? scripts/arm-device.sh starts an emulated one (its top-1 is the ARM kernels', its latency is
    not the board's, and the report says so).
    Writes bench.csv, bench.json, bench.md and bench.png (with matplotlib) in --out.

    \b
    Exit codes:
      0  measured (failed models, if any, are listed with their reason)
      2  bad input, or a --remote device that cannot be used (one-line error)
      3  with --min-top1: a model is below the floor or failed
    """
    from edgeclf.bench import report
    from edgeclf.bench.core import parse_backends, parse_threads, run_bench

    result = run_bench(BenchOptions(
        exports=list(exports), data=data, out=out, runs=runs, warmup=warmup, threads=parse_threads(threads),
        backends=parse_backends(backends), min_top1=min_top1, log=log or None, remotes=list(remotes),
        remote_python=remote_python, local=not no_local, ssh_options=list(ssh_options), ssh_config=ssh_config,
        max_images=max_images, decode_on=decode_on,
        formats=[f.strip() for f in formats.split(",") if f.strip()] if formats else None,
        command="edgeclf bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else ""))
    from edgeclf.page import try_build

    runs = dict.fromkeys(e.bundle.source.get("run") for e in result.exports)
    pages = [p for p in (try_build(run, "benches", result.out_dir) for run in runs) if p]
    console = _console()
    report.print_table(result, console)
    for page in pages:
        console.print(f"report: {page}", markup=False, highlight=False)
    sys.exit(result.exit_code)


def _console():
    from edgeclf.log import table_console

    return table_console(160)  # the combined table is wide
