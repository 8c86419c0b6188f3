"""`edgeclf run`: classify a camera, a video, a stream or a folder. Never imports TensorFlow."""
from __future__ import annotations

import signal
from pathlib import Path

import click

from edgeclf.runtime.backends import BACKEND_NAMES


@click.command("run")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--source", "-s", required=True,
              help="0 (camera index), picamera, a video, an image, a folder (recursive), a glob, or an RTSP/HTTP URL.")
@click.option("--backend", type=click.Choice(list(BACKEND_NAMES)), default="auto",
              show_default=True, help="Inference runtime; auto picks by file type and what is installed.")
@click.option("--artifact", default=None,
              help="Which model of an export folder, e.g. tflite-int8, tflite-fp32, onnx-fp32 (or a file name). "
                   "Default: tflite int8, then fp16, fp32, then ONNX.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Inference threads [default: all cores].")
@click.option("--mode", type=click.Choice(["auto", "latency", "throughput"]), default="auto", show_default=True,
              help="latency: one interpreter puts all --threads on each frame. throughput: --threads "
                   "interpreters of one thread each classify frames in parallel, results kept in order "
                   "(more frames per second, more memory). auto: throughput for folders and video files, "
                   "latency for cameras and streams.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True,
              help="ONNX Runtime execution provider (cuda/tensorrt: Jetson, onnxruntime-gpu).")
@click.option("--top-k", type=click.IntRange(1, 1000), default=3, show_default=True, help="Labels drawn and written.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help='Top-1 scores below this are reported as "unknown".')
@click.option("--headless", is_flag=True, help="Never open a window (automatic when there is no display).")
@click.option("--save", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the annotated frames to a video (.mp4 or .avi).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="One row per frame or file: preds.csv or preds.jsonl.")
@click.option("--max-frames", type=click.IntRange(1), default=None, help="Stop after this many frames.")
@click.option("--reconnect-timeout", type=click.FloatRange(0), default=None,
              help="Live sources: give up when a lost camera/stream is not back after this many seconds "
                   "[default: keep retrying].")
def command(model: Path, source: str, backend: str, artifact: str | None, threads: int | None, mode: str, provider: str,
            top_k: int, threshold: float, headless: bool, save: Path | None, output: Path | None,
            max_frames: int | None, reconnect_timeout: float | None) -> None:
    """Classify a camera, video, stream or folder with an exported MODEL (export folder, .tflite or .onnx).

    \b
      edgeclf run runs/train/exp/export --source 0
      edgeclf run export/ --source photos/ --output preds.csv --headless
      edgeclf run model_int8.tflite --source rtsp://cam.local/stream --save out.mp4
    """
    def on_term(signum, frame):  # systemd/docker stop: the same clean shutdown as Ctrl-C
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread (an embedding application): leave its handlers alone
        previous = None
    try:
        _run(model, source, backend, artifact, threads, mode, provider, top_k, threshold, headless, save, output,
             max_frames, reconnect_timeout)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(model, source, backend, artifact, threads, mode, provider, top_k, threshold, headless, save, output,
         max_frames, reconnect_timeout) -> None:
    from edgeclf.runtime.backends import open_backend
    from edgeclf.runtime.loop import RunOptions, run_source

    be = open_backend(model, backend, artifact=artifact, threads=threads, provider=provider)
    ref = be.model
    others = [a.name for a in ref.bundle.artifacts if a is not ref.artifact]
    top1 = f", val top-1 {ref.artifact.val_top1:.1%}" if ref.artifact.val_top1 is not None else ""
    chosen = "chosen with --artifact" if artifact else ("picked" if others else "")
    click.echo(f"model: {ref.path} ({ref.name}{top1}{', ' + chosen if chosen else ''}"
               f"{'; also here: ' + ', '.join(others) if others else ''})", err=True)
    if ref.artifact.recipe is not None:  # how export quantized it (edgeclf.json)
        click.echo(f"quantized: {ref.artifact.recipe.label()}", err=True)
    click.echo(f"backend: {be.name}, {be.describe()}; input {be.width}x{be.height} {be.input_spec.dtype}; "
               f"{len(ref.classes)} classes ({', '.join(ref.classes[:6])}{', ...' if len(ref.classes) > 6 else ''})",
               err=True)
    options = RunOptions(top_k=top_k, threshold=threshold, headless=headless, save=save, output=output,
                         max_frames=max_frames, reconnect_timeout=reconnect_timeout, mode=mode)
    try:
        summary = run_source(be, source, options, echo=lambda m: click.echo(m, err=True))
    finally:
        be.close()
    click.echo(f"summary: {summary.format()}")
    if output is not None:
        click.echo(f"predictions: {output} ({summary.rows} rows)")
    if save is not None:
        click.echo(f"video: {save}")
