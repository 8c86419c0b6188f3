"""The field loop end to end on hymenoptera: does retraining with N labelled camera frames (``edgeclf train DATA
--add DIR``) make the deployed model better on the camera's images, and what does it cost on the original photos?

The set-up (every photo is used once; none is copied into the repo: the folders below are symlinks and frames
written under ``--work``, default ``runs/field_loop``, which git ignores):

* **DATA** (``WORK/data``): hymenoptera's ``val/`` as it is (153 photos: the *original validation split*) and a
  seeded half of each class of ``train/`` (61 ants, 60 bees). The **deployed model** is trained on it
  (``--prepare``): ``edgeclf train WORK/data --project WORK/runs --name base`` (the defaults: MobileNetV2 at
  224 px, 15 + 4 epochs).
* **The camera**: the other half of ``train/`` -- photos the deployed model never trained on -- seen through
  :func:`camera_view`, a fixed cheap camera: warm white balance (gains B 0.70, G 0.95, R 1.20) and lifted
  blacks, a dark vignette; per frame a small rotation (-10..10 degrees), an off-centre crop keeping 65..85 % of
  each side, a Gaussian blur (sigma 0.8..1.6) at the camera's 320 px width (then the frame is stored at that
  width), sensor noise (sigma 6) and JPEG quality 60. Frames are seeded (the photo's index): the same run gives
  the same frames.
* **Field test set** (``WORK/field_test``): frames of 20 photos per class of that half, never labelled for
  training: the fixed yardstick for every N (each model is run on them here, through Keras).
* **Labelled field frames** (``WORK/field_N``, ``frames/`` + ``labels.csv`` as the label page writes them): the
  first N/2 frames per class of the remaining photos (nested: field_20 is in field_40 ...), labelled with their
  photo's class as a person would. Each is added with ``edgeclf train WORK/data --add WORK/field_N --field-val 0.3
  --compare WORK/runs/base --project WORK/runs --name nN``: the tool itself holds 30 % of them out as its *field
  validation set* (report.json ``field_val``, with the deployed model's figure on the same frames: ``compare``)
  and trains on the rest. N = 0 is the deployed model.

Reported per N: top-1 on the field test set (fixed, 40 frames), on the tool's field validation set (before: the
deployed model, after: the retrained one) and on the original validation split (report.json ``top1``, and the
deployed model's).

    flock /tmp/edgeclf-cpu.lock python benchmarks/field_loop.py --prepare [--n 20 40 80] [--work runs/field_loop]

Writes benchmarks/results/field_loop.md and .json (``--out`` to write elsewhere).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hymenoptera_data"
CLASSES = ("ants", "bees")
TEST_PER_CLASS = 20
CAMERA_WIDTH = 320
WB_GAINS = (0.70, 0.95, 1.20)  # B, G, R: a warm, uncorrected white balance


def camera_view(bgr: np.ndarray, seed: int) -> np.ndarray:
    """A photo as the fixed cheap camera gives it (see the module doc): BGR uint8 in, BGR uint8 out."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = bgr.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-10, 10), 1.0)
    img = cv2.warpAffine(bgr, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    keep = rng.uniform(0.65, 0.85)
    ch, cw = int(h * keep), int(w * keep)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = img[y:y + ch, x:x + cw]
    img = cv2.resize(img, (CAMERA_WIDTH, max(2, round(ch * CAMERA_WIDTH / cw))), interpolation=cv2.INTER_AREA)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 1.6)).astype(np.float32)
    img = img * np.array(WB_GAINS, np.float32) * 0.85 + 30  # white balance, lifted blacks
    hh, ww = img.shape[:2]
    yy, xx = np.mgrid[0:hh, 0:ww]
    r2 = ((yy - hh / 2) / (hh / 2)) ** 2 + ((xx - ww / 2) / (ww / 2)) ** 2
    img *= (1 - 0.35 * np.clip(r2 / 2, 0, 1))[..., None]  # vignette: corners 35 % darker
    img += rng.normal(0, 6, img.shape)
    ok, buf = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 60])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.jpg"))


def make_folders(data: Path, work: Path, ns: list[int], seed: int = 0) -> dict:
    """WORK/data (symlinks), WORK/field_test and WORK/field_N (camera frames + labels.csv)."""
    import cv2

    rng = random.Random(seed)
    base = work / "data"
    shutil.rmtree(base, ignore_errors=True)
    plan = {"base_train": {}, "field_test": {}, "field_pool": {}}
    pool: dict[str, list[Path]] = {}
    for c in CLASSES:
        photos = _photos(data / "train" / c)
        rng.shuffle(photos)
        half = len(photos) // 2
        (base / "train" / c).mkdir(parents=True)
        for p in photos[:half]:
            (base / "train" / c / p.name).symlink_to(p.resolve())
        pool[c] = photos[half:]
        plan["base_train"][c] = half
    (base / "val").symlink_to((data / "val").resolve(), target_is_directory=True)

    def frames(folder: Path, items: list[tuple[Path, str, int]]) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "frames").mkdir(parents=True)
        rows = []
        for photo, label, i in items:
            name = f"frames/{label}_{i:04d}.jpg"  # a camera names frames by time; the class only eases reading
            assert cv2.imwrite(str(folder / name), camera_view(cv2.imread(str(photo)), seed * 100_000 + i))
            rows.append((name, label))
        with open(folder / "labels.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "label"])
            w.writerows(rows)

    index = {(c, p): i for i, (c, p) in enumerate((c, p) for c in CLASSES for p in pool[c])}
    test = [(p, c, index[(c, p)]) for c in CLASSES for p in pool[c][:TEST_PER_CLASS]]
    frames(work / "field_test", test)
    plan["field_test"] = {c: TEST_PER_CLASS for c in CLASSES}
    rest = {c: pool[c][TEST_PER_CLASS:] for c in CLASSES}
    plan["field_pool"] = {c: len(rest[c]) for c in CLASSES}
    for n in ns:
        if n // 2 > min(len(v) for v in rest.values()):
            raise SystemExit(f"N={n}: only {min(len(v) for v in rest.values())} field photos per class left")
        frames(work / f"field_{n}", [(p, c, index[(c, p)]) for c in CLASSES for p in rest[c][:n // 2]])
    return plan


def edgeclf(*args: str) -> float:
    """``python -m edgeclf ARGS`` from the repo root; its wall time."""
    t = time.time()
    proc = subprocess.run([sys.executable, "-m", "edgeclf", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode != 0:
        raise SystemExit(f"edgeclf {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.time() - t


def field_test_top1(run: Path, work: Path) -> tuple[float, int]:
    """The run's best model (Keras) on the field test frames: top-1 and the number right."""
    import keras

    from edgeclf.data.dataset import Sample
    from edgeclf.rundir import load_run
    from edgeclf.train.field_eval import predict

    info = load_run(run)
    with open(work / "field_test" / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    samples = [Sample(str(work / "field_test" / r["file"]), info.classes.index(r["label"]), "field_test") for r in rows]
    model = keras.models.load_model(info.best, compile=False)
    pred = predict(model, samples, info.imgsz, info.config.resize).argmax(axis=1)
    right = int((pred == np.array([s.label for s in samples])).sum())
    return right / len(samples), right


def _rel(p: Path) -> str:
    return os.path.relpath(p, ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "field_loop")
    ap.add_argument("--n", type=int, nargs="+", default=[20, 40, 80])
    ap.add_argument("--prepare", action="store_true", help="train the deployed model WORK/runs/base first")
    ap.add_argument("--no-control", dest="control", action="store_false",
                    help="skip the control runs (seed 1: the deployed model's recipe retrained, and the largest N)")
    ap.add_argument("--train-args", default="", help="extra edgeclf train options for every run (e.g. a smaller model)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    os.environ.setdefault("EDGECLF_WEIGHTS_DIR", str(ROOT.parent / "shared" / "weights"))
    work, extra = args.work.resolve(), args.train_args.split()
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    plan = make_folders(args.data, work, args.n)
    runs, commands, seconds = work / "runs", [], {}
    base = runs / "base"
    cmd = ["train", _rel(work / "data"), *extra, "--project", _rel(runs), "--name", "base"]
    if args.prepare or not (base / "report.json").is_file():
        shutil.rmtree(base, ignore_errors=True)
        seconds["base"] = round(edgeclf(*cmd), 1)
    commands.append("edgeclf " + " ".join(cmd))
    rows = []
    base_rep = json.loads((base / "report.json").read_text())
    top1, right = field_test_top1(base, work)
    rows.append({"n": 0, "run": "base", "field_test_top1": top1, "field_test_right": right,
                 "val_top1": base_rep["top1"], "field_val": None})
    todo = [(n, 0) for n in args.n] + ([(0, 1), (max(args.n), 1)] if args.control else [])
    for n, seed in todo:
        name = f"n{n}" + (f"_seed{seed}" if seed else "")
        shutil.rmtree(runs / name, ignore_errors=True)
        cmd = ["train", _rel(work / "data"), *extra, *(["--seed", str(seed)] if seed else []),
               *(["--add", _rel(work / f"field_{n}"), "--field-val", "0.3"] if n else []),
               "--compare", _rel(base), "--project", _rel(runs), "--name", name]
        seconds[name] = round(edgeclf(*cmd), 1)
        commands.append("edgeclf " + " ".join(cmd))
        rep = json.loads((runs / name / "report.json").read_text())
        top1, right = field_test_top1(runs / name, work)
        fv, cmp_ = rep.get("field_val") or {}, rep["compare"]
        rows.append({"n": n, "seed": seed, "run": name, "field_test_top1": top1, "field_test_right": right, "val_top1": rep["top1"],
                     "base_val_top1": cmp_["val_top1"], "trained_frames": rep["field"]["train_images"],
                     "field_val": {"images": fv["images"], "top1": fv["top1"], "base_top1": cmp_["field_val_top1"],
                                   "delta_pt": 100 * cmp_["field_val_top1_delta"]} if fv else None})
        print(f"{name}: field test {top1:.2%}, field val "
              + (f"{cmp_['field_val_top1']:.2%} -> {fv['top1']:.2%}" if fv else "-")
              + f", val {cmp_['val_top1']:.2%} -> {rep['top1']:.2%} ({seconds[name]:.0f}s)", flush=True)
    write(args, plan, rows, commands, seconds, time.time() - started, base_rep)


def _machine() -> dict:
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                    .stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    except OSError:
        cpu = platform.processor()
    return {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version()}


def write(args, plan, rows, commands, seconds, total, base_rep) -> None:
    from importlib.metadata import version

    machine = _machine()
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine,
           "tensorflow": version("tensorflow") if _has("tensorflow") else version("tensorflow-cpu"),
           "model": base_rep.get("model"), "imgsz": base_rep.get("imgsz"), "plan": plan, "rows": rows,
           "commands": commands, "seconds": seconds, "total_seconds": round(total, 1),
           "camera": {"width": CAMERA_WIDTH, "white_balance_bgr": WB_GAINS, "doc": camera_view.__doc__}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "field_loop.json").write_text(json.dumps(out, indent=1) + "\n")
    b = rows[0]
    lines = [
        "# The field loop on hymenoptera: retraining with N labelled camera frames",
        "",
        f"{out['date']}; {machine['cpu']}, {machine['nproc']} cores; TensorFlow {out['tensorflow']}; "
        f"{out['model']} at {out['imgsz']} px; {total / 60:.1f} min in all. Script: `benchmarks/field_loop.py` "
        "(its docstring has the set-up and the camera transform).",
        "",
        f"The deployed model trained on {sum(plan['base_train'].values())} of hymenoptera's training photos (a "
        f"seeded half per class); the camera sees the other half through a fixed cheap camera (warm white "
        f"balance, lifted blacks, vignette, {CAMERA_WIDTH} px, blur, noise, JPEG 60, random rotation and "
        f"off-centre crop). Field test set: frames of {2 * TEST_PER_CLASS} of those photos, fixed for every N, "
        f"never labelled for training. N labelled frames (N/2 per class, of other photos) are added with "
        f"`--add --field-val 0.3`: the tool trains on 70 % of them and reports top-1 on the other 30 % (its field "
        f"validation set) beside the deployed model's on the same frames (`--compare`).",
        "",
        "| N labelled frames | trained on | field test top-1 (40 frames) | field validation set: deployed → retrained "
        "| original val top-1 (153 photos): deployed → retrained |",
        "|---:|---:|---:|---|---|",
        f"| 0 (deployed model) | 0 | {b['field_test_top1']:.1%} ({b['field_test_right']}/40) | - | "
        f"{b['val_top1']:.1%} |",
    ]
    for r in rows[1:]:
        fv = r["field_val"]
        what = f"{r['n']}" + (f", `--seed {r['seed']}` (control)" if r["seed"] else "")
        lines.append(f"| {what} | {r['trained_frames']} | {r['field_test_top1']:.1%} ({r['field_test_right']}/40) | "
                     + (f"{fv['base_top1']:.1%} → {fv['top1']:.1%} on {fv['images']} frames ({fv['delta_pt']:+.1f} pt)"
                        if fv else "-")
                     + f" | {r['base_val_top1']:.1%} → {r['val_top1']:.1%} "
                     f"({100 * (r['val_top1'] - r['base_val_top1']):+.1f} pt) |")
    lines += ["", "One field test frame is 2.5 pt, one original validation photo 0.65 pt. The control rows "
              "retrain with another seed (`--seed 1`): N = 0 is the deployed model's own recipe and data, so its "
              "change is what retraining alone moves; read the other rows against it.", "", "Commands (from the repo root; `--prepare` runs the "
              "first):", "", "```", *commands, "```", "",
              "Seconds per `edgeclf train` (feature caching included): "
              + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()), ""]
    (args.out / "field_loop.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'field_loop.md'}")


def _has(name: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(name)
        return True
    except PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
