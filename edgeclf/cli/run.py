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
@click.option("--loop", is_flag=True, help="Files and videos: start again at the end, for ever (a demo, a soak).")
@click.option("--pace", type=click.FloatRange(0, min_open=True), default=None, metavar="FPS",
              help="Files and videos: deliver at most FPS frames per second, as a camera would.")
@click.option("--serve", metavar="[HOST:]PORT", default=None,
              help="Serve the live page and the HTTP API (/, /stream.mjpg, /api/latest, /api/events, /api/predict, "
                   "/metrics, /healthz). Host 127.0.0.1 unless given; any other address needs --token.")
@click.option("--token", envvar="EDGECLF_TOKEN", default=None, show_envvar=True,
              help="Bearer token every endpoint but /healthz then asks for (the page takes it once, as ?token=).")
@click.option("--mqtt", metavar="URL", default=None,
              help="Publish state, events and availability to mqtt://[user[:pass]@]HOST[:PORT] "
                   "(the password may come from EDGECLF_MQTT_PASSWORD instead).")
@click.option("--mqtt-prefix", default=None, help="Topic prefix [default: edgeclf/<device name>].")
@click.option("--device-name", default="", help="This device's name in topics and Home Assistant [default: host name].")
@click.option("--ha-discovery", is_flag=True, help="Publish Home Assistant MQTT discovery configs (retained).")
@click.option("--webhook", metavar="URL", default=None, help="POST each event as JSON to this URL.")
@click.option("--snapshots", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Save the picture of each event's start frame as JPEG in this folder.")
@click.option("--snapshots-max-mb", type=click.FloatRange(0, min_open=True), default=500.0, show_default=True,
              help="Disk cap of --snapshots: the oldest pictures go first.")
@click.option("--event-smooth", type=click.IntRange(1, 1000), default=9, show_default=True,
              help="Events: frames over which scores are averaged.")
@click.option("--event-enter", type=click.FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              help="Events: smoothed score at which a label starts...")
@click.option("--event-exit", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="...and below which it ends (lower than --event-enter: no flapping).")
@click.option("--event-min-frames", type=click.IntRange(1, 10000), default=3, show_default=True,
              help="Events: consecutive frames at or above --event-enter before a label starts.")
@click.option("--event-cooldown", type=click.FloatRange(0), default=2.0, show_default=True,
              help="Events: seconds before the same label can start again.")
@click.option("--event-labels", default=None, metavar="A,B",
              help="Events: only these labels [default: every class].")
@click.option("--stall-timeout", type=click.FloatRange(0, min_open=True), default=5.0, show_default=True,
              help="Seconds without a frame before /healthz answers 503 and the systemd watchdog is no longer fed.")
@click.option("--stream-fps", type=click.FloatRange(0, 60, min_open=True), default=5.0, show_default=True,
              help="Frame rate cap of the live view (it never costs inference time).")
@click.option("--max-upload-mb", type=click.FloatRange(0, 1024, min_open=True), default=10.0, show_default=True,
              help="Largest image /api/predict accepts (413 above).")
@click.option("--collect", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Save the frames worth labelling (JPEG) in DIR, a record each in DIR/collected.jsonl; "
                   "label them with: edgeclf label DIR. A restart into the same DIR continues it.")
@click.option("--collect-margin", type=click.FloatRange(0, 1), default=0.2, show_default=True,
              help="Collect: keep a frame whose two best scores are closer than this (0: off).")
@click.option("--collect-below", type=click.FloatRange(0, 1), default=0.6, show_default=True,
              help="Collect: keep a frame whose top score is below this (0: off).")
@click.option("--collect-events/--no-collect-events", default=True, show_default=True,
              help="Collect: keep the first frame of each event.")
@click.option("--collect-every", type=click.IntRange(0), default=0, show_default=True, metavar="N",
              help="Collect: also keep a random 1 in N frames, confident or not (0: off).")
@click.option("--collect-per-minute", type=click.IntRange(0), default=10, show_default=True,
              help="Collect: at most this many frames in any minute (0: no cap).")
@click.option("--collect-per-hour", type=click.IntRange(0), default=200, show_default=True,
              help="Collect: at most this many frames in any hour (0: no cap).")
@click.option("--collect-max-mb", type=click.FloatRange(0, min_open=True), default=1000.0, show_default=True,
              help="Collect: stop collecting (nothing is deleted) when DIR would pass this many MB.")
def command(model: Path, source: str, backend: str, artifact: str | None, threads: int | None, mode: str, provider: str,
            top_k: int, threshold: float, headless: bool, save: Path | None, output: Path | None,
            max_frames: int | None, reconnect_timeout: float | None, loop: bool, pace: float | None,
            **device: object) -> None:
    """Classify a camera, video, stream or folder with an exported MODEL (export folder, .tflite or .onnx).

    \b
      edgeclf run runs/train/exp/export --source 0
      edgeclf run export/ --source photos/ --output preds.csv --headless
      edgeclf run model_int8.tflite --source rtsp://cam.local/stream --save out.mp4
      edgeclf run export/ --source 0 --serve 8080 --mqtt mqtt://broker.local --ha-discovery
      edgeclf run export/ --source 0 --collect field/     then: edgeclf label field/
    """
    def on_term(signum, frame):  # systemd/docker stop: the same clean shutdown as Ctrl-C
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread (an embedding application): leave its handlers alone
        previous = None
    try:
        _run(model, source, backend, artifact, threads, mode, provider, top_k, threshold, headless, save, output,
             max_frames, reconnect_timeout, loop, pace, _device_options(device))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _device_options(d: dict):
    from edgeclf.runtime.device import DeviceOptions
    from edgeclf.runtime.events import EventOptions

    collect = None
    if d.get("collect") is not None:
        from edgeclf.runtime.collect import CollectOptions

        collect = CollectOptions(folder=d["collect"], margin=d["collect_margin"], below=d["collect_below"],
                                 events=d["collect_events"], every=d["collect_every"],
                                 per_minute=d["collect_per_minute"], per_hour=d["collect_per_hour"],
                                 max_mb=d["collect_max_mb"])
    labels = tuple(lb.strip() for lb in str(d["event_labels"]).split(",") if lb.strip()) if d["event_labels"] else None
    events = EventOptions(smooth=d["event_smooth"], enter=d["event_enter"], exit=d["event_exit"],
                          min_frames=d["event_min_frames"], cooldown=d["event_cooldown"], labels=labels)
    return DeviceOptions(serve=d["serve"], token=d["token"], mqtt=d["mqtt"], mqtt_prefix=d["mqtt_prefix"],
                         device_name=d["device_name"], ha_discovery=d["ha_discovery"], webhook=d["webhook"],
                         snapshots=d["snapshots"], snapshots_max_mb=d["snapshots_max_mb"], events=events,
                         stall_after=d["stall_timeout"], stream_fps=d["stream_fps"],
                         max_upload_mb=d["max_upload_mb"], collect=collect)


def _run(model, source, backend, artifact, threads, mode, provider, top_k, threshold, headless, save, output,
         max_frames, reconnect_timeout, loop=False, pace=None, device=None) -> None:
    from edgeclf.runtime.backends import open_backend
    from edgeclf.runtime.device import build_hub, check
    from edgeclf.runtime.loop import RunOptions, run_source

    be = open_backend(model, backend, artifact=artifact, threads=threads, provider=provider)
    hub = None
    if device is not None:
        device.top_k, device.threshold = top_k, threshold
    if device is not None and device.wanted:
        try:
            check(device, list(be.model.classes))
        except BaseException:
            be.close()
            raise
        if device.serve or device.mqtt or device.webhook:
            headless = True  # a device service never opens a window
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
                         max_frames=max_frames, reconnect_timeout=reconnect_timeout, mode=mode, loop=loop, pace=pace)
    echo = lambda m: click.echo(m, err=True)  # noqa: E731
    try:
        if device is not None and device.wanted:
            hub = build_hub(be, device, echo=echo)
        summary = run_source(be, source, options, echo=echo, hub=hub)
    finally:
        if hub is not None:
            hub.close()
        be.close()
    click.echo(f"summary: {summary.format()}")
    if output is not None:
        click.echo(f"predictions: {output} ({summary.rows} rows)")
    if save is not None:
        click.echo(f"video: {save}")
