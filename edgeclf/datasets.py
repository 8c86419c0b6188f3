"""Public data sets the main job and examples use, fetched once into a cache folder, checksummed.

    python -m edgeclf.datasets flower_photos      # prints the folder (downloads and extracts if needed)

Standard library only, so a fresh clone can fetch its data before anything is installed. The cache is
``$EDGECLF_CACHE`` (default ``~/.cache/edgeclf``). Offline, the error names the URL and the folder to put
the archive in; an archive put there by hand is checked against its SHA-256 and extracted.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from edgeclf.errors import EdgeclfError
from edgeclf.fsutil import sha256

DOWNLOAD_TIMEOUT = 30  # seconds without data before a download is given up


@dataclass(frozen=True)
class Archive:
    name: str  # the folder the archive extracts to, and the name users type
    url: str
    file: str  # the archive's file name in the cache
    sha256: str
    bytes: int
    note: str = ""


ARCHIVES = {a.name: a for a in [
    # TensorFlow's flower photos (3670 photos, 5 classes, CC-BY); checksum as TensorFlow Datasets records it.
    Archive("flower_photos", "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz",
            "flower_photos.tgz", "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c", 228813984,
            "5 classes, 3670 photos, not split (edgeclf splits 80/20, seeded)"),
]}


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECLF_CACHE") or Path.home() / ".cache" / "edgeclf").expanduser()


def _download(archive: Archive, url: str, target: Path) -> None:
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, open(part, "wb") as out:
            print(f"downloading {url} ({archive.bytes / 1e6:.0f} MB) to {target.parent}", file=sys.stderr)
            shutil.copyfileobj(response, out, 1 << 20)
    except (urllib.error.URLError, socket.timeout, OSError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise EdgeclfError(f"cannot download {url} ({reason}): put {archive.file} (sha256 {archive.sha256[:16]}…) "
                           f"in {target.parent}, or set EDGECLF_DATA to a photo folder") from exc
    os.replace(part, target)


def _extract(archive: Archive, tgz: Path, folder: Path) -> None:
    """Extract into a temporary folder beside ``folder`` and rename it: a kill never leaves half a data set."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", dir=folder.parent))
    try:
        with tarfile.open(tgz) as tar:
            try:
                tar.extractall(tmp, filter="data")  # no absolute paths, links out of the folder, devices
            except TypeError:  # a Python without extraction filters (before 3.10.12 / 3.11.4)
                tar.extractall(tmp)
        inner = tmp / archive.name
        if not inner.is_dir():
            raise EdgeclfError(f"{tgz}: does not hold a {archive.name}/ folder")
        os.replace(inner, folder)
    except tarfile.TarError as exc:
        raise EdgeclfError(f"{tgz}: not a readable archive ({exc}); delete it and try again") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch(name: str, url: str | None = None) -> Path:
    """The extracted folder of data set ``name``, downloading and checking it first if needed."""
    try:
        archive = ARCHIVES[name]
    except KeyError:
        raise EdgeclfError(f"unknown data set {name!r}; known: {', '.join(ARCHIVES)}") from None
    root = cache_dir()
    folder = root / archive.name
    if folder.is_dir():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tgz = root / archive.file
    url = url or os.environ.get(f"EDGECLF_{name.upper()}_URL") or archive.url
    if not tgz.is_file():
        _download(archive, url, tgz)
    digest = sha256(tgz)
    if digest != archive.sha256:
        raise EdgeclfError(f"{tgz}: sha256 {digest[:16]}… is not the expected {archive.sha256[:16]}… "
                           f"(incomplete or another file): delete it and fetch {url} again")
    _extract(archive, tgz, folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: python -m edgeclf.datasets {{{'|'.join(ARCHIVES)}}}", file=sys.stderr)
        return 2
    try:
        print(fetch(argv[0]))
    except EdgeclfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
