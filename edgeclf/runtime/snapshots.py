"""``--snapshots DIR``: the picture of each event's start frame, written by a thread of its own.

Each file is written atomically (a reader never sees half a JPEG) and the folder is kept under a disk cap:
the oldest pictures go first. When the writer falls behind, pictures are dropped and counted, never queued
without bound: a slow SD card costs snapshots, not inference.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from edgeclf import fsutil
from edgeclf.log import get_logger
from edgeclf.runtime.events import Event
from edgeclf.runtime.hub import Mailbox

log = get_logger(__name__)
PATTERN = "*.jpg"


class SnapshotWriter:
    def __init__(self, folder: Path, max_bytes: int, quality: int = 85):
        self.folder, self.max_bytes, self.quality = Path(folder), max_bytes, quality
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            from edgeclf.errors import ServiceError

            raise ServiceError(f"--snapshots {folder}: cannot create ({exc.strerror or exc})") from exc
        self._box: Mailbox[tuple[Path, np.ndarray]] = Mailbox(8)
        self._thread = threading.Thread(target=self._work, name="edgeclf-snapshots", daemon=True)
        self._thread.start()
        self.written = 0
        self._warned = False

    @property
    def dropped(self) -> int:
        return self._box.dropped

    def save(self, bgr: np.ndarray, event: Event) -> str:
        """Queue the picture of ``event``'s frame; returns its file name (relative to the folder)."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(event.start))
        label = "".join(c if c.isalnum() or c in "-_" else "_" for c in event.label)
        name = f"{stamp}-{event.id:05d}-{label}.jpg"
        self._box.put((self.folder / name, bgr))
        return name

    def _work(self) -> None:
        import cv2

        while True:
            item = self._box.get()
            if item is None:
                return
            path, bgr = item
            try:
                ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                if not ok:
                    raise OSError("JPEG encoding failed")
                fsutil.write_bytes(path, buf.tobytes())
                self.written += 1
                self._prune()
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    log.warning(f"--snapshots: cannot write {path.name} ({exc}); the run goes on")

    def _prune(self) -> None:
        files = sorted(self.folder.glob(PATTERN), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        while files and total > self.max_bytes:
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)

    def close(self) -> None:
        self._box.close()
        self._thread.join(timeout=5)
