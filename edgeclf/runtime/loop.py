"""The `edgeclf run` loop: frames in, predictions out, as little as possible in between."""
from __future__ import annotations

import functools
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from edgeclf.imageio import load_rgb, resize_rgb
from edgeclf.log import get_logger
from edgeclf.runtime.backends import Backend
from edgeclf.runtime.events import FrameResult
from edgeclf.runtime.hub import Hub
from edgeclf.runtime.output import (PredictionWriter, Prediction, VideoSaver, Window, display_available, draw_overlay,
                                    make_prediction)
from edgeclf.runtime.frames import Frame, Preprocess, Skip, Source, SourceError
from edgeclf.runtime.sources import FileSource, open_source

log = get_logger(__name__)


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
    mode: str = "auto"  # "latency", "throughput" or "auto": see MODES
    reconnect_timeout: float | None = None  # live sources: give up after this long without a frame
    progress: bool = True  # a status line on stderr now and then
    loop: bool = False  # files and videos: from the start again when they end
    pace: float | None = None  # files and videos: at most this many frames per second, as a camera


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
    mode: str = "latency"
    workers: int = 1  # throughput mode: interpreters classifying frames in parallel

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
        mode = f" ({self.workers} frames at a time, one thread each)" if self.mode == "throughput" else ""
        return (f"{', '.join(parts)}; latency mean {self.mean_latency:.2f} ms, p50 {self.latency(50):.2f} ms, "
                f"p90 {self.latency(90):.2f} ms; {self.fps:.1f} FPS over {self.wall_s:.2f} s{mode}"
                + (" (stopped by Ctrl-C)" if self.interrupted else ""))

    def to_dict(self) -> dict:
        return {"frames": self.frames, "dropped": self.dropped, "skipped": len(self.skipped),
                "reconnects": self.reconnects, "latency_ms": {"mean": self.mean_latency, "p50": self.latency(50),
                                                              "p90": self.latency(90)},
                "fps": self.fps, "wall_s": self.wall_s, "interrupted": self.interrupted, "mode": self.mode,
                "workers": self.workers}


MODES = ("auto", "latency", "throughput")
# auto: throughput for files and video files (no frame may be dropped, so frames per second is what counts),
# latency for cameras and streams (the newest frame, as soon as possible). A folder of fewer files than this
# is not worth a second interpreter.
_MIN_FILES_FOR_THROUGHPUT = 8


def _classify(backend: Backend, frame: Frame) -> tuple[Frame, np.ndarray, float]:
    """(frame, probabilities, inference latency in ms); the tensor is the reader's when it made one."""
    tensor = frame.tensor if frame.tensor is not None else backend.prepare(frame.input[None])
    t0 = time.perf_counter()
    probs = backend.infer(tensor)[0]
    return frame, probs, (time.perf_counter() - t0) * 1000.0


def _sequential(frames: Iterable[Frame], backend: Backend) -> Iterator[tuple[Frame, np.ndarray, float]]:
    """Latency mode: one backend, all its threads on each frame."""
    for frame in frames:
        yield _classify(backend, frame)


class _Workers:
    """Throughput mode: each thread owns a one-thread backend and classifies the next frame of the source.

    A folder's files are read and decoded by the worker that classifies them (as many busy threads as
    cores, none waiting on another); other sources hand over frames their reader thread made. Results
    come back in the source's order; workers run at most ``2 x workers`` frames ahead of the consumer.
    Inference releases the GIL, so the workers run on separate cores: one interpreter per core, with
    nothing to synchronise inside a frame, beats one interpreter whose threads meet after every layer.
    """

    def __init__(self, src: Source, backends: Sequence[Backend]):
        self._src = src
        self._tasks: Iterator[Callable[[], Frame | Skip]] = (
            src.tasks() if isinstance(src, FileSource) else (functools.partial(_same, f) for f in src))
        self._take = threading.Lock()  # one worker at a time advances the source
        self._cond = threading.Condition()
        self._done: dict[int, object] = {}
        self._next = 0
        self._end: int | None = None  # number of items the source had, once it is exhausted
        self._error: BaseException | None = None  # what ended the source, raised after its frames
        self._stop = threading.Event()
        self._room = threading.Semaphore(2 * len(backends))
        self._threads = [threading.Thread(target=self._work, args=(b,), daemon=True, name=f"edgeclf-infer-{i}")
                         for i, b in enumerate(backends)]
        import cv2  # the workers fill every core: OpenCV's own threads would only oversubscribe

        self._cv_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)

    def _work(self, backend: Backend) -> None:
        while True:
            self._room.acquire()
            if self._stop.is_set():
                return
            with self._take:
                if self._end is not None:
                    return
                seq = self._next
                try:
                    task = next(self._tasks)
                except BaseException as exc:  # StopIteration: the end; anything else: the source failed
                    self._finish(seq, None if isinstance(exc, StopIteration) else exc)
                    return
                self._next += 1
            try:
                item = task()
                result: object = _classify(backend, item) if isinstance(item, Frame) else item  # a Skip: in place
            except SourceError as exc:  # a file that must decode did not: the source ends there
                self._finish(seq, exc)
                return
            except BaseException as exc:  # handed to the consumer in the frame's place
                result = exc
            with self._cond:
                self._done[seq] = result
                self._cond.notify_all()

    def _finish(self, seq: int, error: BaseException | None) -> None:
        with self._cond:
            if self._end is None or seq < self._end:
                self._end, self._error = seq, error
            self._cond.notify_all()

    def __iter__(self) -> Iterator[tuple[Frame, np.ndarray, float]]:
        for t in self._threads:
            t.start()
        seq = 0
        while True:
            with self._cond:
                while seq not in self._done and (self._end is None or seq < self._end):
                    self._cond.wait(0.5)
                if seq not in self._done:  # the source ended here
                    if self._error is not None:
                        raise self._error
                    return
                result = self._done.pop(seq)
            self._room.release()
            seq += 1
            if isinstance(result, Skip):
                self._src.skip(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                yield result  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        for _ in self._threads:
            self._room.release()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=10)
        import cv2

        cv2.setNumThreads(self._cv_threads)


def _same(frame: Frame) -> Frame:
    return frame


class _HoldSignals:
    """Ctrl-C (or a SIGTERM the caller turned into one) that lands while a frame's outputs are being written
    -- CSV row, count, video frame, window -- takes effect once they are all written, so they always agree.

    Wraps the handlers already installed for SIGINT and SIGTERM; does nothing outside the main thread.
    A KeyboardInterrupt the handler raised is also remembered (``interrupted``): raised inside a finalizer
    that the garbage collector happened to be running, Python would print and drop it.
    """

    def __init__(self) -> None:
        self.holding = False
        self.interrupted = False
        self._pending: list[tuple[int, object]] = []
        self._saved: dict[int, Callable] = {}

    def __enter__(self) -> "_HoldSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous = signal.getsignal(signum)
                if callable(previous):
                    self._saved[signum] = previous
                    signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.holding:
            self._pending.append((signum, frame))
        else:
            self._call(signum, frame)

    def _call(self, signum, frame) -> None:
        try:
            self._saved[signum](signum, frame)
        except KeyboardInterrupt:
            self.interrupted = True
            raise

    def release(self) -> None:
        """End of a frame's outputs: act on what was held, or on an interrupt that got lost."""
        self.holding = False
        while self._pending:
            signum, frame = self._pending.pop(0)
            self._call(signum, frame)
        if self.interrupted:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        self.holding = False
        for signum, previous in self._saved.items():
            signal.signal(signum, previous)


def _pick_mode(mode: str, src: Source, backend: Backend) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    if src.live or getattr(src, "pace", None) or backend.threads < 2 or backend.name == "opencv":
        # a camera, or files played as one; OpenCV's thread count is process-wide
        return "latency"
    if isinstance(src, FileSource) and len(src.paths) < _MIN_FILES_FOR_THROUGHPUT:
        return "latency"
    # each worker holds its own copy of the weights (XNNPACK repacks them): a big float model on a small
    # board stays in latency mode rather than crowd out its memory
    available = _available_memory()
    if available is not None and 2 * backend.threads * backend.model.path.stat().st_size > available // 4:
        return "latency"
    return "throughput"


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _echo(message: str) -> None:
    log.info(message)


def run_source(backend: Backend, source: str | Source, options: RunOptions | None = None,
               echo: Callable[[str], None] = _echo, hub: Hub | None = None) -> RunSummary:
    """Classify every frame of ``source`` (a spec such as ``"0"``, a path, a URL, or a :class:`Source`).

    ``hub`` gets every result (events, the page, MQTT, ...: see :mod:`edgeclf.runtime.hub`); it is closed
    when the loop ends. Ctrl-C stops the loop; threads are joined and files closed in every case.
    """
    opts = options or RunOptions()
    show = not opts.headless
    if show:
        show, why = display_available()
        if not show:
            echo(f"no window: {why} (use --headless to say so)")
    draw = show or opts.save is not None
    keep = draw or (hub is not None and hub.wants_images)
    summary = RunSummary()
    classes = backend.model.classes
    if isinstance(source, Source):
        src = source
    else:
        spec = backend.model.bundle.input
        try:
            src = open_source(source, Preprocess(backend.height, backend.width, spec.resize, keep_image=keep,
                                                 prepare=backend.prepare),
                              reconnect_timeout=opts.reconnect_timeout, loop=opts.loop, pace=opts.pace)
        except BaseException:
            if hub is not None:
                hub.close("the source did not open")
            raise
    writer = window = saver = workers = None
    top_k, threshold = opts.top_k, opts.threshold
    latencies = summary.latencies_ms
    started = time.perf_counter()
    last_report, fps_ema, last_t = started, None, None
    hold = _HoldSignals().__enter__()
    try:
        summary.mode = _pick_mode(opts.mode, src, backend)
        if summary.mode == "throughput":
            summary.workers = max(2, backend.threads)
            workers = _Workers(src, [backend.clone(1) for _ in range(summary.workers)])
            started = time.perf_counter()  # the workers' interpreters are loaded: the loop starts now
            results: Iterable[tuple[Frame, np.ndarray, float]] = workers
        else:
            results = _sequential(src, backend)
        writer = PredictionWriter(opts.output, top_k) if opts.output else None
        window = Window(f"edgeclf - {src.name}") if show else None
        if opts.save is not None:
            fps = src.fps or (2.0 if isinstance(src, FileSource) else 30.0)  # a slideshow of files
            saver = VideoSaver(opts.save, fps)
        if hub is not None:
            hub.start(src.name, lambda: src.dropped)
        for frame, probs, latency in results:
            t1 = time.perf_counter()
            latencies.append(latency)
            pred = make_prediction(probs, classes, top_k, threshold)
            hold.holding = True
            if writer is not None:
                writer.write(frame.source, frame.index, pred, latency)
            summary.frames += 1  # classified (and recorded): counted before anything else can be interrupted
            if hub is not None:
                hub.publish(FrameResult(summary.frames, frame.source, frame.index, time.time(), pred, latency,
                                        frame.image))
            if draw and frame.image is not None:
                if last_t is not None:
                    inst = 1.0 / max(t1 - last_t, 1e-6)
                    fps_ema = inst if fps_ema is None else 0.9 * fps_ema + 0.1 * inst
                annotated = draw_overlay(frame.image, pred, fps_ema, latency)
                if saver is not None:
                    saver.write(annotated)
                if window is not None and not window.show(annotated):
                    break
            hold.release()
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
        hold.__exit__()
        summary.wall_s = time.perf_counter() - started
        src.close()
        if hub is not None:
            hub.close("interrupted" if summary.interrupted else "the source ended")
        for closer in (workers, writer, saver, window):
            if closer is not None:
                closer.close()
    summary.dropped, summary.skipped, summary.reconnects = src.dropped, list(src.skipped), src.reconnects
    summary.rows = writer.rows if writer is not None else 0
    if summary.frames == 0 and not summary.interrupted and not src.live:
        raise SourceError(f"{src.name}: no frame could be classified"
                          + (f" ({len(src.skipped)} files skipped as undecodable)" if src.skipped else ""))
    return summary
