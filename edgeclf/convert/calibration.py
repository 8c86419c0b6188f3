"""The images int8 export learns from: calibration (ranges) and selection (the search's judge).

Both are drawn stratified (per class, seeded) from the training split, disjoint from each other, and
the validation split is never used for either: the accuracy that export reports on validation is not
the figure the search tuned on. Images are decoded and resized by :func:`edgeclf.imageio.load_resized`,
the function ``run`` and ``bench`` use: the quantization ranges are measured on exactly what the
deployed model will see. One calibration source feeds TFLite's representative dataset and ONNX
Runtime's calibration reader. No TensorFlow.
"""
from __future__ import annotations

import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from edgeclf.errors import EdgeclfError
from edgeclf.imageio import ImageDecodeError, load_resized

from edgeclf.config import DEFAULT_CALIB_IMAGES

MIN_RECOMMENDED = 100


def stratified_sample(samples: list, n: int, seed: int = 0) -> list:
    """``n`` samples with every class represented in proportion (at least one each, when possible)."""
    if n >= len(samples):
        return list(samples)
    rng = random.Random(seed)
    by_class: dict[int, list] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    for group in by_class.values():
        rng.shuffle(group)
    total = len(samples)
    quota = {c: max(1, int(round(n * len(g) / total))) for c, g in by_class.items()}
    while sum(quota.values()) > n:  # rounding overshoot: trim the largest quotas
        c = max(quota, key=lambda k: quota[k])
        quota[c] -= 1
    picked = [s for c, g in sorted(by_class.items()) for s in g[:quota[c]]]
    rest = [s for c, g in sorted(by_class.items()) for s in g[quota[c]:]]
    rng.shuffle(rest)
    picked += rest[: n - len(picked)]
    rng.shuffle(picked)
    return picked


def load_images(samples: list, height: int, width: int, resize: str) -> np.ndarray:
    """uint8 NHWC RGB batch of ``samples`` (undecodable files are an error naming the file)."""
    def one(s):
        return load_resized(s.path, height, width, resize)

    if not samples:
        return np.zeros((0, height, width, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=4) as pool:
        try:
            return np.stack(list(pool.map(one, samples)))
        except ImageDecodeError as exc:
            raise EdgeclfError(f"calibration/validation image: {exc}") from exc


@dataclass
class CalibrationSet:
    """RGB uint8 images, NHWC, at the model's input size: what the model will see on the device."""

    images: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def representative_dataset(self):
        """For ``TFLiteConverter.representative_dataset``: one float32 0..255 image per step."""
        def gen():
            for img in self.images:
                yield [img[None].astype(np.float32)]
        return gen

    def ort_reader(self, input_name: str):
        """An ``onnxruntime.quantization.CalibrationDataReader`` over the same images."""
        from onnxruntime.quantization import CalibrationDataReader

        images = self.images

        class _Reader(CalibrationDataReader):
            def __init__(self):
                self._i = 0

            def get_next(self):
                if self._i >= len(images):
                    return None
                batch = images[self._i:self._i + 1].astype(np.float32)
                self._i += 1
                return {input_name: batch}

            def rewind(self):
                self._i = 0

        return _Reader()


@dataclass
class SelectionSet:
    """Labelled images the quantization search judges candidates on (training split, not calibration)."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def views(self, n: int, seed: int = 0) -> "SelectionSet":
        """``n`` random views of each image (:func:`random_views`), labelled as their image."""
        return SelectionSet(random_views(self.images, n, seed), np.repeat(self.labels, n),
                            [p for p in self.paths for _ in range(n)])


def random_views(images: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` random views of each image (uint8 NHWC, same size): a crop of 55-90 % of the side at a random
    place, resized back, mirrored half the time, its brightness and contrast each scaled by 0.75-1.25.

    Inputs the model never saw exactly, though they show what it learned: a model that gets every training
    image right gets most but not all of these right (98 % on flowers), and an int8 copy of it changes about
    as many of their answers as it changes on new photos (measured: ``benchmarks/results/judge_study.md``)."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = images.shape[1:3]
    out = np.empty((len(images) * n, h, w, 3), np.uint8)
    k = 0
    for img in images:
        for _ in range(n):
            side = rng.uniform(0.55, 0.9)
            ch, cw = max(1, int(h * side)), max(1, int(w * side))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            v = cv2.resize(img[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
            if rng.random() < 0.5:
                v = v[:, ::-1]
            mean = v.mean()
            v = (v - mean) * rng.uniform(0.75, 1.25) + mean * rng.uniform(0.75, 1.25)
            out[k] = np.clip(v, 0, 255).astype(np.uint8)
            k += 1
    return out


def split_training(train_samples: list, n_calib: int, n_select: int, seed: int = 0) -> tuple[list, list]:
    """Disjoint stratified draws from the training split: (calibration, selection).

    Selection takes at most half of a small training split, so calibration always keeps the rest.
    """
    if n_calib < 1:
        raise EdgeclfError(f"--calib-images must be at least 1 (got {n_calib})")
    if not train_samples:
        raise EdgeclfError("no training images to calibrate on")
    selection: list = []
    if n_select > 0:
        selection = stratified_sample(train_samples, min(n_select, len(train_samples) // 2), seed + 1)
    chosen = {s.path for s in selection}
    rest = [s for s in train_samples if s.path not in chosen]
    return stratified_sample(rest, n_calib, seed), selection


def calibration_set(samples: list, height: int, width: int, resize: str, warn=None) -> CalibrationSet:
    if warn is not None and len(samples) < MIN_RECOMMENDED:
        warn(f"calibrating on {len(samples)} images (< {MIN_RECOMMENDED}): int8 ranges may be poor; "
             f"use --calib-images {DEFAULT_CALIB_IMAGES}")
    return CalibrationSet(load_images(samples, height, width, resize))


def selection_set(samples: list, height: int, width: int, resize: str) -> SelectionSet:
    return SelectionSet(load_images(samples, height, width, resize), np.array([s.label for s in samples], np.int64),
                        [s.path for s in samples])
