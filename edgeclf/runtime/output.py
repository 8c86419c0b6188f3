"""Predictions, what we draw on frames, and where rows and annotated video go."""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeclf import fsutil
from edgeclf.errors import EdgeclfError, first_line
from edgeclf.log import get_logger
from edgeclf.imageio import resize_rgb

UNKNOWN = "unknown"

log = get_logger(__name__)


class OutputError(EdgeclfError):
    """An output file that cannot be written."""


@dataclass
class Prediction:
    """Top-1 ``label`` (``"unknown"`` if its score is below the threshold), its ``score``, and the top-k."""

    label: str
    score: float
    top_k: list[tuple[str, float]]
    probs: np.ndarray = field(repr=False)

    @property
    def index(self) -> int:
        return int(np.argmax(self.probs))


def make_prediction(probs: np.ndarray, classes: list[str], top_k: int = 3, threshold: float = 0.0) -> Prediction:
    k = max(1, min(top_k, len(classes)))
    order = np.argsort(-probs, kind="stable")[:k]
    ranked = [(classes[i], float(probs[i])) for i in order]
    label, score = ranked[0]
    return Prediction(label if score >= threshold else UNKNOWN, score, ranked, probs)


# --- rows ---------------------------------------------------------------------------------------

def csv_header(top_k: int) -> list[str]:
    cols = ["source", "frame", "label", "score"]
    for i in range(1, top_k + 1):
        cols += [f"top{i}_label", f"top{i}_score"]
    return cols + ["latency_ms"]


class PredictionWriter:
    """One row per frame or file to ``.csv`` or ``.jsonl``.

    Rows go straight to the named file (flushed about once a second), so a long camera run can be
    followed with ``tail -f`` and a power cut loses at most a second of rows.
    CSV columns: source, frame, label, score, top1_label, top1_score, ..., topK_label, topK_score,
    latency_ms. JSONL: ``{"source", "frame", "label", "score", "top_k": [{"label", "score"}...],
    "latency_ms"}``.
    """

    def __init__(self, path: str | Path, top_k: int):
        self.path = Path(path)
        self.kind = self.path.suffix.lower().lstrip(".")
        if self.kind not in ("csv", "jsonl"):
            raise OutputError(f"--output {self.path}: use a .csv or .jsonl file name")
        self.top_k = top_k
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", encoding="utf-8", newline="")
        except OSError as exc:
            raise OutputError(f"--output {self.path}: cannot write ({exc.strerror or exc})") from exc
        self._csv = csv.writer(self._fh) if self.kind == "csv" else None
        if self._csv:
            self._csv.writerow(csv_header(top_k))
        self._flushed = time.monotonic()
        self.rows = 0

    def write(self, source: str, frame: int, pred: Prediction, latency_ms: float) -> None:
        top = pred.top_k + [("", float("nan"))] * (self.top_k - len(pred.top_k))
        if self._csv:
            row: list = [source, frame, pred.label, f"{pred.score:.6f}"]
            for label, score in top[:self.top_k]:
                row += [label, "" if label == "" else f"{score:.6f}"]
            self._csv.writerow(row + [f"{latency_ms:.3f}"])
        else:
            self._fh.write(json.dumps({
                "source": source, "frame": frame, "label": pred.label, "score": round(pred.score, 6),
                "top_k": [{"label": lb, "score": round(s, 6)} for lb, s in pred.top_k[:self.top_k]],
                "latency_ms": round(latency_ms, 3)}, ensure_ascii=False) + "\n")
        self.rows += 1
        now = time.monotonic()
        if now - self._flushed > 1.0:
            self._fh.flush()
            self._flushed = now

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()


# --- drawing ------------------------------------------------------------------------------------

def draw_overlay(bgr: np.ndarray, pred: Prediction, fps: float | None, latency_ms: float) -> np.ndarray:
    """The top-k labels with probabilities, latency and FPS, drawn on a copy of the frame."""
    import cv2

    out = bgr.copy()
    h = out.shape[0]
    scale = max(0.4, min(1.2, h / 600))
    thick = max(1, round(scale * 2))
    line = int(28 * scale) + 4
    lines = [f"{label} {score * 100:5.1f}%" for label, score in pred.top_k]
    if pred.label == UNKNOWN:
        lines.insert(0, f"{UNKNOWN} (<threshold)")
    status = f"{latency_ms:.1f} ms" + (f"  {fps:.1f} FPS" if fps else "")
    for i, text in enumerate(lines + [status]):
        y = 8 + line * (i + 1)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        cv2.rectangle(out, (4, y - th - 6), (12 + tw, y + base), (0, 0, 0), -1)
        colour = (80, 255, 80) if i == 0 and pred.label != UNKNOWN else (255, 255, 255)
        cv2.putText(out, text, (8, y - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)
    return out


def display_available() -> tuple[bool, str]:
    """Whether a window can be shown here, and why not. Never raises."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no DISPLAY"
    try:
        import cv2

        gui = cv2.getBuildInformation().split("GUI:", 1)[1].splitlines()[0].strip() if hasattr(
            cv2, "getBuildInformation") else ""
    except Exception:
        return False, "OpenCV not usable"
    if gui.upper() == "NONE":
        return False, "this OpenCV has no GUI (opencv-python-headless)"
    return True, ""


class Window:
    """An OpenCV window; falls back to headless on the first failure instead of crashing."""

    def __init__(self, title: str = "edgeclf"):
        self.title, self.ok = title, True

    def show(self, bgr: np.ndarray) -> bool:
        """Show a frame; False when the user asked to stop (q, Esc, window closed)."""
        if not self.ok:
            return True
        import cv2

        try:
            cv2.imshow(self.title, bgr)
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), 27):
                return False
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error as exc:
            self.ok = False
            log.warning("cannot show a window (%s); going on headless", first_line(exc))
            return True

    def close(self) -> None:
        if self.ok:
            try:
                import cv2

                cv2.destroyAllWindows()
            except Exception:
                pass


class VideoSaver:
    """Annotated frames to a video (mp4v). Written beside the target and renamed when closed."""

    def __init__(self, path: str | Path, fps: float):
        self.path, self.fps = Path(path), fps
        self._stack = ExitStack()
        self._writer = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, bgr: np.ndarray) -> None:
        import cv2

        if self._writer is None:
            self._size = (bgr.shape[1], bgr.shape[0])
            try:
                tmp = self._tmp = self._stack.enter_context(fsutil.atomic_path(self.path))
            except OSError as exc:
                raise OutputError(f"--save {self.path}: cannot write ({exc.strerror or exc})") from exc
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.path.suffix.lower() in (".mp4", ".m4v", ".mov")
                                              else "MJPG"))
            self._writer = cv2.VideoWriter(str(tmp), fourcc, self.fps, self._size)
            if not self._writer.isOpened():
                self._stack.close()
                raise OutputError(f"--save {self.path}: OpenCV cannot write this video format; use .mp4 or .avi")
        if (bgr.shape[1], bgr.shape[0]) != self._size:  # images of a folder differ in size: fit the first
            bgr = resize_rgb(bgr, self._size[1], self._size[0])
        self._writer.write(bgr)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp made it private; a video is meant to be shared
        self._stack.close()  # renames the finished file into place
