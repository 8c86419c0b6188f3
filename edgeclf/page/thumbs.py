"""Images for the run page as data: URIs, so the page is one file: small JPEG thumbnails of photos (bounded
side, modest quality) and the run's PNG plots as they are."""
from __future__ import annotations

import base64
from pathlib import Path

THUMB_SIDE = 128  # px, the longer side
JPEG_QUALITY = 70


def photo(path: str | Path, cache: dict | None = None) -> str | None:
    """A thumbnail of the photo at ``path`` (None when it cannot be read: the page says so)."""
    key = str(path)
    if cache is not None and key in cache:
        return cache[key]
    uri = _photo(Path(path))
    if cache is not None:
        cache[key] = uri
    return uri


def _photo(path: Path) -> str | None:
    from edgeclf.errors import EdgeclfError
    from edgeclf.imageio import _cv2, load_rgb

    cv2 = _cv2()
    try:
        img = load_rgb(path)
    except (EdgeclfError, OSError, ValueError):
        return None
    h, w = img.shape[:2]
    scale = THUMB_SIDE / max(h, w)
    if scale < 1:
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else None


def png(path: str | Path) -> str | None:
    """A PNG file as it is (None when absent)."""
    try:
        return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()
    except OSError:
        return None
