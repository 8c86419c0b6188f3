"""ONNX int8 with and without the stem convolution in float (the old single recipe kept it float), on the run's
validation split: QOperator U8S8, QDQ U8S8 and QDQ S8S8, MinMax on 300 calibration images, 8-bit per-channel
weights. Prints one line per model and recipe; recorded in benchmarks/results/onnx_stem_float.md.

    flock /tmp/edgeclf-cpu.lock python benchmarks/onnx_stem_float.py NAME:RUN_DIR:EXPORT_DIR [...]
"""
import sys, tempfile, time, numpy as np, onnx
from pathlib import Path
from edgeclf.rundir import load_run
from edgeclf.convert.calibration import load_images, split_training, CalibrationSet
from edgeclf.convert.onnx_export import Quantizer, first_conv_names
from edgeclf.contract import Recipe, load_bundle
from edgeclf.stats import mcnemar_exact
import onnxruntime as ort

if not sys.argv[1:] or sys.argv[1] in ("-h", "--help"):  # usage (after the imports: --help proves they resolve)
    print(__doc__)
    sys.exit(0 if sys.argv[1:] else 2)

def run(data, x):
    o = ort.SessionOptions(); o.log_severity_level = 3
    s = ort.InferenceSession(data, o, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    p = np.concatenate([s.run(None, {name: x[k:k+32].astype(np.float32)})[0] for k in range(0, len(x), 32)]).argmax(1)
    t = x[:1].astype(np.float32); [s.run(None, {name: t}) for _ in range(5)]
    ts = []
    for _ in range(40):
        a = time.perf_counter(); s.run(None, {name: t}); ts.append(time.perf_counter() - a)
    return p, 1000 * float(np.median(ts))

for name, run_dir, exp in [a.split(":") for a in sys.argv[1:]]:
    info = load_run(run_dir); ds = info.dataset(); b = load_bundle(exp); inp = b.input
    calib = split_training(ds.train, 300, 0, 0)[0]
    cal = CalibrationSet(load_images(calib, inp.height, inp.width, inp.resize))
    val = load_images(ds.val, inp.height, inp.width, inp.resize); y = np.array([s.label for s in ds.val])
    fp32 = onnx.load(str(Path(exp) / "model_fp32.onnx"))
    pf, tf = run(fp32.SerializeToString(), val)
    q = Quantizer(fp32, cal, Path(tempfile.gettempdir()))
    stem = tuple(first_conv_names(q.model))
    for fmt, act in (("QOperator", "uint8"), ("QDQ", "uint8"), ("QDQ", "int8")):
        for ex in ((), stem):
            r = Recipe(quantizer="onnxruntime", quant_format=fmt, calibration="minmax", calibration_images=len(calib), activation_type=act)
            pq, t = run(q.quantize(r, ex), val)
            m = mcnemar_exact(pq, pf, y)
            print(f"{name} {fmt} {act} stem_float={bool(ex)} drop {100*((pf==y).mean()-(pq==y).mean()):+.2f} L={m.only_reference_right} G={m.only_model_right} agree {(pq==pf).mean():.4f} p50 {t:.2f} (fp32 {tf:.2f})", flush=True)
    q.close()
