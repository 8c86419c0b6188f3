"""The `edgeclf run` loop: frames in, predictions out, as little as possible in between."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeclf.imageio import load_rgb, resize_rgb
from edgeclf.runtime.backends import Backend
from edgeclf.runtime.output import (PredictionWriter, Prediction, VideoSaver, Window, display_available, draw_overlay,
                                    make_prediction)
from edgeclf.runtime.sources import FileSource, Preprocess, Source, SourceError, open_source


class Classifier:
    """A loaded backend plus its labels: images of any size in, :class:`Prediction` out.

        clf = Classifier(open_backend("export/"))
        clf.classify([rgb_image, ...])           # RGB uint8 HxWx3, any size
        clf.classify_files(["a.jpg", "b.png"])
    """

    def __init__(self, backend: Backend, top_k: int = 3, threshold: float = 0.0):
        self.backend, self.top_k, self.threshold = backend, top_k, threshold
        self.classes = backend.model.classes
        spec = backend.model.bundle.input
        self.resize = spec.resize

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return resize_rgb(rgb, self.backend.height, self.backend.width, self.resize)

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not len(images):
            return np.zeros((0, len(self.classes)), np.float32)
        return self.backend.predict(np.stack([self.preprocess(im) for im in images]))

    def classify(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        return [make_prediction(p, self.classes, self.top_k, self.threshold) for p in self.probabilities(images)]

    def classify_files(self, paths: Sequence[str | Path]) -> list[Prediction]:
        return self.classify([load_rgb(p) for p in paths])


@dataclass
class RunOptions:
    top_k: int = 3
    threshold: float = 0.0
    headless: bool = False  # True: never open a window (also automatic without a display)
    save: Path | None = None  # annotated video
    output: Path | None = None  # .csv or .jsonl
    max_frames: int | None = None
    reconnect_timeout: float | None = None  # live sources: give up after this long without a frame
    progress: bool = True  # a status line on stderr now and then


@dataclass
class RunSummary:
    frames: int = 0
    dropped: int = 0
    skipped: list[str] = field(default_factory=list)
    reconnects: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    wall_s: float = 0.0
    interrupted: bool = False
    rows: int = 0

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0

    @property
    def mean_latency(self) -> float:
        return float(np.mean(self.latencies_ms)) if self.latencies_ms else 0.0

    def format(self) -> str:
        parts = [f"{self.frames} frames", f"{self.dropped} dropped"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        if self.reconnects:
            parts.append(f"{self.reconnects} reconnects")
        return (f"{', '.join(parts)}; latency mean {self.mean_latency:.2f} ms, p50 {self.latency(50):.2f} ms, "
                f"p90 {self.latency(90):.2f} ms; {self.fps:.1f} FPS over {self.wall_s:.2f} s"
                + (" (stopped by Ctrl-C)" if self.interrupted else ""))

    def to_dict(self) -> dict:
        return {"frames": self.frames, "dropped": self.dropped, "skipped": len(self.skipped),
                "reconnects": self.reconnects, "latency_ms": {"mean": self.mean_latency, "p50": self.latency(50),
                                                              "p90": self.latency(90)},
                "fps": self.fps, "wall_s": self.wall_s, "interrupted": self.interrupted}


def _echo(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_source(backend: Backend, source: str | Source, options: RunOptions | None = None,
               echo: Callable[[str], None] = _echo) -> RunSummary:
    """Classify every frame of ``source`` (a spec such as ``"0"``, a path, a URL, or a :class:`Source`).

    Ctrl-C stops the loop; threads are joined and files closed in every case.
    """
    opts = options or RunOptions()
    show = not opts.headless
    if show:
        show, why = display_available()
        if not show:
            echo(f"no window: {why} (use --headless to say so)")
    draw = show or opts.save is not None
    summary = RunSummary()
    classes = backend.model.classes
    if isinstance(source, Source):
        src = source
    else:
        spec = backend.model.bundle.input
        src = open_source(source, Preprocess(backend.height, backend.width, spec.resize, keep_image=draw),
                          reconnect_timeout=opts.reconnect_timeout)
    writer = window = saver = None
    predict, top_k, threshold = backend.predict, opts.top_k, opts.threshold
    latencies = summary.latencies_ms
    started = time.perf_counter()
    last_report, fps_ema, last_t = started, None, None
    try:
        writer = PredictionWriter(opts.output, top_k) if opts.output else None
        window = Window(f"edgeclf - {src.name}") if show else None
        if opts.save is not None:
            fps = src.fps or (2.0 if isinstance(src, FileSource) else 30.0)  # a slideshow of files
            saver = VideoSaver(opts.save, fps)
        for frame in src:
            t0 = time.perf_counter()
            probs = predict(frame.input[None])[0]
            t1 = time.perf_counter()
            latency = (t1 - t0) * 1000.0
            latencies.append(latency)
            pred = make_prediction(probs, classes, top_k, threshold)
            if writer is not None:
                writer.write(frame.source, frame.index, pred, latency)
            summary.frames += 1  # classified (and recorded): counted before anything else can be interrupted
            if draw and frame.image is not None:
                if last_t is not None:
                    inst = 1.0 / max(t1 - last_t, 1e-6)
                    fps_ema = inst if fps_ema is None else 0.9 * fps_ema + 0.1 * inst
                annotated = draw_overlay(frame.image, pred, fps_ema, latency)
                if saver is not None:
                    saver.write(annotated)
                if window is not None and not window.show(annotated):
                    break
            last_t = t1
            if opts.max_frames is not None and summary.frames >= opts.max_frames:
                break
            if opts.progress and src.live and t1 - last_report > 10.0:
                last_report = t1
                echo(f"{summary.frames} frames, {src.dropped} dropped, {summary.frames / (t1 - started):.1f} FPS, "
                     f"last: {pred.label} {pred.score:.2f}")
    except KeyboardInterrupt:
        summary.interrupted = True
        if writer is not None:  # Ctrl-C between a row's write and the count: the row's frame was classified
            summary.frames = max(summary.frames, writer.rows)
    finally:
        summary.wall_s = time.perf_counter() - started
        src.close()
        for closer in (writer, saver, window):
            if closer is not None:
                closer.close()
    summary.dropped, summary.skipped, summary.reconnects = src.dropped, list(src.skipped), src.reconnects
    summary.rows = writer.rows if writer is not None else 0
    if summary.frames == 0 and not summary.interrupted and not src.live:
        raise SourceError(f"{src.name}: no frame could be classified"
                          + (f" ({len(src.skipped)} files skipped as undecodable)" if src.skipped else ""))
    return summary
