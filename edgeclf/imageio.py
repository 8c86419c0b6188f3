"""The one image decoder and the one resize of edgeclf.

Training, calibration, verification, ``bench`` and ``run`` all feed models through
:func:`load_rgb` / :func:`decode_rgb` and :func:`resize_rgb`, so a model's accuracy never depends
on which of our tools fed it. Only numpy and OpenCV are needed (Pillow is used, when installed,
for the few formats OpenCV cannot read, e.g. GIF on builds without a GIF decoder).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeclf.errors import EdgeclfError

# Extensions we try to decode. Anything else in a class folder is junk (and reported as such).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
     ".pbm", ".pnm"}
)
# Files that real photo folders contain and that are never images: skipped without a warning.
JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", ".directory", "icon\r"})

# OpenCV flag per resize method. "bilinear" is INTER_LINEAR_EXACT, not INTER_LINEAR: INTER_LINEAR's SIMD
# paths round differently on x86 and ARM (the same JPEG resized to 224x224 gives different bytes with
# OpenCV's x86_64 and aarch64 wheels), while INTER_LINEAR_EXACT is bit-exact across ISAs (and within one
# grey level of INTER_LINEAR). A model trained here sees on a Pi the very bytes it saw here. "area" has no
# exact variant: its bytes may differ by ISA.
RESIZE_METHODS = {"bilinear": 5, "area": 3, "nearest": 0}  # cv2.INTER_LINEAR_EXACT, INTER_AREA, INTER_NEAREST
RESIZE_IMPLEMENTATION = {"bilinear": "cv2.INTER_LINEAR_EXACT", "area": "cv2.INTER_AREA",
                         "nearest": "cv2.INTER_NEAREST"}  # what caches of resized images are keyed by
DEFAULT_RESIZE = "bilinear"


class ImageDecodeError(EdgeclfError):
    """A file that is not a decodable image."""


def _cv2():
    import cv2  # imported lazily so that `edgeclf --help` stays instant

    return cv2


def is_candidate(path: Path) -> bool:
    """True for files that look like images by name (case-insensitive extension, not hidden/junk)."""
    name = path.name
    if name.startswith(".") or name.lower() in JUNK_NAMES:
        return False
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _to_uint8_rgb_from_bgr(img: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    if img.dtype == np.uint16:
        img = (img / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _decode_with_pillow(data: bytes) -> np.ndarray | None:
    try:
        import io

        from PIL import Image, ImageOps
    except ImportError:  # the device may not have Pillow: OpenCV was the only chance
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)  # first frame of an animation
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                arr = (arr / max(arr.max(), 1.0) * 255.0) if arr.max() > 255 else arr
                arr = np.clip(arr, 0, 255).astype(np.uint8)
                return np.stack([arr] * 3, axis=-1)
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception:
        return None


def decode_rgb(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to an HxWx3 uint8 RGB array.

    Handles grayscale, RGBA (alpha dropped), CMYK JPEG, 16-bit PNG, EXIF orientation, and the first
    frame of GIF/WebP/TIFF. Raises :class:`ImageDecodeError` naming the file otherwise.
    """
    cv2 = _cv2()
    buf = np.frombuffer(data, dtype=np.uint8)
    img = None
    if buf.size:
        # IMREAD_COLOR honours EXIF orientation and converts 16-bit/CMYK/gray to 8-bit BGR.
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is not None and img.size:
        return _to_uint8_rgb_from_bgr(img)
    rgb = _decode_with_pillow(data) if buf.size else None
    if rgb is None or rgb.size == 0:
        raise ImageDecodeError(f"{name}: not a decodable image")
    return np.ascontiguousarray(rgb)


def load_rgb(path: str | Path) -> np.ndarray:
    """Read and decode a file (any path, unicode and spaces included) to HxWx3 uint8 RGB."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return decode_rgb(data, str(path))


def resize_rgb(img: np.ndarray, height: int, width: int, method: str = DEFAULT_RESIZE) -> np.ndarray:
    """Resize an RGB uint8 image to exactly height x width (no crop, aspect not kept), as trained."""
    if img.shape[0] == height and img.shape[1] == width:
        return img
    cv2 = _cv2()
    try:
        interp = RESIZE_METHODS[method]
    except KeyError as exc:
        raise ValueError(f"unknown resize method {method!r}; expected one of {sorted(RESIZE_METHODS)}") from exc
    return cv2.resize(img, (width, height), interpolation=interp)


def bgr_to_rgb(frame: np.ndarray) -> np.ndarray:
    """A camera/video frame (BGR from OpenCV) to RGB."""
    return _to_uint8_rgb_from_bgr(frame)


def load_resized(path: str | Path, height: int, width: int, method: str = DEFAULT_RESIZE) -> np.ndarray:
    """Decode a file and resize it to the model input: the single path every tool uses."""
    return resize_rgb(load_rgb(path), height, width, method)
