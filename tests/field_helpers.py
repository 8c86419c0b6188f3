"""A "field" for the field loop's tests and benchmark: training photos as a deployed camera would see them.

    frames = field_frames(HYMENOPTERA / "train", per_class=20)          # [(bgr, "ants"), ...]
    path = write_video(tmp / "field.mp4", frames, fps=20)                # play it: edgeclf run ... --pace 20
    jpegs = field_jpegs(frames)                                          # or serve it: MjpegServer(jpegs)

:func:`camera_view` is the camera model (its docstring says what it models); everything is seeded, so the same
arguments give the same frames.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FRAME = (320, 240)  # (width, height) of the field's frames: a small webcam stream


def camera_view(bgr: np.ndarray, seed: int, size: tuple[int, int] = FRAME) -> np.ndarray:
    """A photo as a cheap fixed camera in front of a hive would give it (BGR in, BGR ``size`` out).

    It models, in this order:

    * a **colour cast** (white balance off, e.g. under a warm lamp or in shade): a gain per channel, 0.85..1.15;
    * **defocus** of a fixed-focus lens: a Gaussian blur, sigma 0.6..1.4 px;
    * a **cheap sensor's lower resolution**: a half-resolution round trip (downscale x0.5, upscale back);
    * a camera **mounted slightly askew**: a rotation of -8..8 degrees (borders reflected);
    * a **different framing** than the photographer's: an off-centre crop keeping 75..90 % of each side;
    * the stream's **frame size**: resized to ``size`` (320x240 by default).

    The same transform as tests/test_unit_field.py's (the training side of the field loop), so the collected
    frames, the labelled frames and the trained-on frames come from one camera. Seeded: the same seed, the same
    frame.
    """
    import cv2

    rng = np.random.default_rng(seed)
    img = bgr.astype(np.float32) * rng.uniform(0.85, 1.15, 3)
    img = cv2.GaussianBlur(np.clip(img, 0, 255).astype(np.uint8), (0, 0), rng.uniform(0.6, 1.4))
    h, w = img.shape[:2]
    img = cv2.resize(cv2.resize(img, (max(2, w // 2), max(2, h // 2)), interpolation=cv2.INTER_AREA), (w, h))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-8, 8), 1.0)
    img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    keep = rng.uniform(0.75, 0.9)
    ch, cw = int(h * keep), int(w * keep)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return cv2.resize(img[y:y + ch, x:x + cw], size, interpolation=cv2.INTER_AREA)


def field_photos(split_dir: str | Path, per_class: int, offset: int = 0,
                 classes: tuple[str, ...] = ("ants", "bees")) -> list[tuple[Path, str]]:
    """``per_class`` photos of each class of ``split_dir`` (sorted, from ``offset``), classes interleaved in
    runs of 5 as visitors come and go."""
    split_dir = Path(split_dir)
    pools = {c: sorted((split_dir / c).glob("*.jpg"))[offset:offset + per_class] for c in classes}
    out: list[tuple[Path, str]] = []
    for start in range(0, per_class, 5):
        for c in classes:
            out += [(p, c) for p in pools[c][start:start + 5]]
    return out


def field_frames(split_dir: str | Path, per_class: int = 20, offset: int = 0, seed: int = 0,
                 size: tuple[int, int] = FRAME) -> list[tuple[np.ndarray, str]]:
    """(BGR frame, true class) for :func:`field_photos`, each through :func:`camera_view` (seed + index)."""
    import cv2

    out = []
    for i, (photo, label) in enumerate(field_photos(split_dir, per_class, offset)):
        bgr = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        if bgr is not None:
            out.append((camera_view(bgr, seed + i, size), label))
    return out


def write_video(path: str | Path, frames: list[tuple[np.ndarray, str]], fps: float = 20.0, repeat: int = 1) -> Path:
    """An MP4 (mp4v) of the frames, each shown ``repeat`` times in a row."""
    import cv2

    path = Path(path)
    h, w = frames[0][0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    assert writer.isOpened(), f"cannot write {path}"
    for bgr, _ in frames:
        for _ in range(repeat):
            writer.write(bgr)
    writer.release()
    return path


def field_jpegs(frames: list[tuple[np.ndarray, str]], quality: int = 85) -> list[bytes]:
    """The frames JPEG-encoded, for tests/stream_helpers.py's MjpegServer (an IP camera)."""
    import cv2

    out = []
    for bgr, _ in frames:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        out.append(buf.tobytes())
    return out
