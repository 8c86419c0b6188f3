"""ONNX int8 through ONNX Runtime's quantizer: one pre-processed fp32 graph quantized many times, calibrating
once per method (:class:`Quantizer`, the search's), and the single recipe of ``--search none``
(:func:`quantize_int8_auto`). :mod:`edgeclf.convert.onnx_export` converts and walks the ladder."""
from __future__ import annotations

import contextlib
import io as _io
import re
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgeclf.contract import Recipe
from edgeclf.errors import EdgeclfError, first_line
from edgeclf.log import get_logger

log = get_logger(__name__)

INPUT_NAME = "image"
CALIBRATE_METHODS = ("minmax", "percentile", "entropy")
QUANTIZER = "onnxruntime"
# (label, quant format, activation type): the ways ONNX Runtime runs int8 on a CPU
ONNX_FORMATS = (("QDQ", "QDQ", "uint8"), ("QOperator", "QOperator", "uint8"), ("QDQ", "QDQ", "int8"))
SENSITIVITY_IMAGES = 16  # calibration images the per-tensor SQNR (the groups' prior order) is measured on


def first_conv_names(proto) -> list[str]:
    """The Conv nodes fed by the image without another Conv in between (the stem convolution)."""
    produced_by = {o: n for n in proto.graph.node for o in n.output}
    inputs = {i.name for i in proto.graph.input}
    found = []
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        stack, seen, reaches_image = list(node.input[:1]), set(), False
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in inputs:
                reaches_image = True
                continue
            src = produced_by.get(t)
            if src is None or src.op_type == "Conv":
                continue
            stack.extend(src.input)
        if reaches_image and not any(produced_by.get(t) is not None and produced_by[t].op_type == "Conv"
                                     for t in seen):
            found.append(node.name)
    return found


HEAD_OPS = {"Softmax", "Gemm", "MatMul", "Add", "Mul", "Div", "Identity", "Reshape", "Flatten", "Squeeze"}


def head_names(proto) -> list[str]:
    """The classifier's last linear layer and what follows it to the output (its bias, the temperature, the
    softmax): kept in float in every int8 model. They cost a few thousand multiply-adds, and quantized they
    round the logits to 256 levels of their range and the scores to steps of 1/256, so that two classes close
    to each other tie (argmax then picks the first; measured on hymenoptera: a validation image lost to a
    tie) and ``--threshold`` sees coarse scores."""
    produced_by = {o: n for n in proto.graph.node for o in n.output}
    found, stack, linear = [], [o.name for o in proto.graph.output], False
    while stack:
        node = produced_by.get(stack.pop())
        if node is None or node.op_type not in HEAD_OPS or node.name in found:
            continue
        found.append(node.name)
        if node.op_type in ("MatMul", "Gemm"):  # the last linear layer: stop there
            linear = True
            continue
        stack.extend(i for i in node.input if i in produced_by)
    return found if linear else []  # no linear layer before the output: not a classifier head, nothing kept


def quantize_int8(fp32_proto, calibration, per_channel: bool = True, method: str = "minmax",
                  reduce_range: bool = True, work_dir: Path | None = None, float_stem: bool = True):
    """Static QDQ int8 ``onnx.ModelProto`` from an fp32 one, calibrated on ``calibration``.

    ``float_stem`` keeps the first convolution (raw 0..255 pixels in, 3 channels) in float: on
    MobileNetV2 1.0/224 (flowers) that alone took 8-bit weights from -1.77 to -0.82 pt.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATE_METHODS:
        raise EdgeclfError(f"--onnx-calibrate {method!r}: choose one of {', '.join(CALIBRATE_METHODS)}")
    with tempfile.TemporaryDirectory(prefix=".onnx-quant-", dir=work_dir) as tmp:
        tmp = Path(tmp)
        fp32, pre, q = tmp / "fp32.onnx", tmp / "pre.onnx", tmp / "int8.onnx"
        onnx.save(fp32_proto, fp32)
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        except Exception as exc:  # pre-processing is an optimisation; quantize the plain graph then
            first = first_line(exc)
            raise EdgeclfError(f"onnxruntime quant_pre_process failed ({first}); is sympy installed?") from exc
        cal = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}[method]
        pre_proto = onnx.load(str(pre))
        exclude = (first_conv_names(pre_proto) if float_stem else []) + head_names(pre_proto)
        try:
            quantize_static(str(pre), str(q), calibration.ort_reader(INPUT_NAME), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=cal, nodes_to_exclude=exclude)
        except Exception as exc:
            first = first_line(exc)
            raise EdgeclfError(f"ONNX int8 quantization failed: {first}") from exc
        return onnx.load(str(q))


def _agreement(proto, reference_pred, calibration) -> float:
    """Share of calibration images where ``proto`` (run by ONNX Runtime) agrees with ``reference_pred``."""
    return float((_predict(proto, calibration.images) == reference_pred).mean())


def _predict(proto, images):
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    out = [sess.run(None, {INPUT_NAME: images[k:k + 32].astype(np.float32)})[0] for k in range(0, len(images), 32)]
    return np.concatenate(out).argmax(axis=1)


def quantize_int8_auto(fp32_proto, calibration, per_channel: bool, method: str, work_dir: Path | None):
    """Quantize with 7-bit and with 8-bit weights; keep the one closer to fp32 on the calibration images."""
    import onnx

    ref = _predict(fp32_proto, calibration.images)
    scores = {}
    for rr in (False, True):  # on a tie the first wins: 8-bit weights (-1.8 vs -4.8 pt on flowers)
        proto = quantize_int8(onnx.ModelProto.FromString(fp32_proto.SerializeToString()), calibration,
                              per_channel=per_channel, method=method, reduce_range=rr, work_dir=work_dir)
        scores[rr] = (_agreement(proto, ref, calibration), proto)
    best = max(scores, key=lambda rr: scores[rr][0])
    return scores[best][1], best, {("reduced" if rr else "full"): round(v[0], 4) for rr, v in scores.items()}


class Quantizer:
    """Quantizes one pre-processed fp32 graph many times, calibrating once per method: the search's quantizer
    for ONNX (:class:`edgeclf.convert.search.Quantizer`). ``options`` (export's) narrow the recipes
    (``--onnx-calibrate``, ``--onnx-reduce-range``, ``--onnx-per-channel``) and give the threads."""

    wide_note = "16-bit activations: no 16-bit CPU kernels, slower than fp32"

    def __init__(self, fp32_proto, calibration, work_dir: Path, options=None, layer_names: set[str] = frozenset()):
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.options = options
        self.layer_names = set(layer_names)
        self._fastest: Recipe | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix=".onnx-quant-", dir=work_dir)
        self.dir = Path(self._tmp.name)
        self.calibration = calibration
        fp32 = self.dir / "fp32.onnx"
        self.pre = self.dir / "pre.onnx"
        onnx.save(fp32_proto, fp32)
        try:
            quant_pre_process(str(fp32), str(self.pre), skip_symbolic_shape=False)
        except Exception as exc:
            first = first_line(exc)
            raise EdgeclfError(f"onnxruntime quant_pre_process failed ({first}); is sympy installed?") from exc
        self.model = onnx.load(str(self.pre))
        self.head = tuple(head_names(self.model))  # kept in float in every recipe
        self._caches: dict[str, Path] = {}
        self._n = 0

    def close(self) -> None:
        self._tmp.cleanup()

    def families(self, judge) -> list:
        """One family per way ONNX Runtime runs int8 on a CPU, in the order *timed on this machine* (the three
        MinMax probes are measured by ``judge`` first): the format's recipe bias-corrected, then the same with
        its weights GPTQ-rounded (:mod:`edgeclf.convert.rounding`) as well, then as ONNX Runtime leaves it,
        then 7-bit weights, Percentile and Entropy ranges, per-tensor weights. Only the first recipe
        of a family is corrected (a correction costs ~20 s on MobileNetV2 224; the others are reached when the
        first is broken, and correcting a broken recipe does not mend it)."""
        from edgeclf.convert.search import Candidate, Family

        opts = self.options
        n = len(self.calibration)
        per_channel = opts.onnx_per_channel is not False
        methods = [opts.onnx_calibrate] if opts.onnx_calibrate else list(CALIBRATE_METHODS)
        weights = [8 if opts.onnx_reduce_range is False else 7] if opts.onnx_reduce_range is not None else [8, 7]
        probes = []
        for label, _, act in ONNX_FORMATS:
            recipe = Recipe(QUANTIZER, quant_format=label, calibration=methods[0], calibration_images=n,
                            weight_bits=weights[0], per_channel=per_channel, activation_type=act)
            trial, _ = judge.measure(Candidate(recipe, lambda r=recipe: self.quantize(r), tier=0))
            probes.append((trial.p50_ms if trial.p50_ms is not None else float("inf"), recipe))
        probes.sort(key=lambda pr: pr[0])
        log.info("  int8 formats by speed here: %s", ", ".join(f"{r.format_label()} {ms:.2f} ms" for ms, r in probes))
        self._fastest = probes[0][1]
        families = []
        for rank, (_, probe) in enumerate(probes):
            recipes = [probe] + [replace(probe, weight_bits=w) for w in weights[1:]]
            recipes += [replace(probe, calibration=m) for m in methods[1:]]
            if opts.onnx_per_channel is None:
                recipes.append(replace(probe, per_channel=False))
            families.append(Family(10 * rank, recipes, corrected=[probe, replace(probe, weight_rounding="gptq")]))
        return families

    def layer_label(self, node: str) -> str:
        if not hasattr(self, "_inputs"):
            self._inputs = {n.name: list(n.input) for n in self.model.graph.node}
        return node_label(node, self.layer_names, self._inputs)

    def wide_recipe(self) -> Recipe:
        base = self._fastest or Recipe(QUANTIZER, quant_format="QDQ", calibration_images=len(self.calibration))
        return replace(base, quant_format="QDQ", activation_type="uint16", activation_bits=16)

    def cache(self, method: str) -> Path:
        """Activation ranges of the calibration images by ``method``, computed once."""
        if method not in self._caches:
            from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

            path = self.dir / f"ranges-{method}.json"
            calibrator = create_calibrator(str(self.pre), [], augmented_model_path=str(self.dir / f"aug-{method}.onnx"),
                                           calibrate_method=_method(method), extra_options=_calib_options(method))
            try:
                calibrator.collect_data(self.calibration.ort_reader(INPUT_NAME))
                save_tensors_data(calibrator.compute_data(), str(path))
            finally:
                calibrator.clear_collected_data() if hasattr(calibrator, "clear_collected_data") else None
            self._caches[method] = path
        return self._caches[method]

    def quantize(self, recipe: Recipe, exclude: tuple[str, ...] = ()) -> bytes:
        """The model file for ``recipe``, the nodes ``exclude`` kept in float; bias-corrected against float
        (:mod:`edgeclf.convert.biascorr`) when the recipe says so."""
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        threads = self.options.threads if self.options is not None else None
        if recipe.bias_correction:
            from edgeclf.convert import biascorr

            plain = self.quantize(replace(recipe, bias_correction=False), exclude)
            return biascorr.onnx(plain, self.model, self.calibration.images, INPUT_NAME, threads)
        if recipe.weight_rounding == "gptq":
            from edgeclf.convert import rounding

            nearest = self.quantize(replace(recipe, weight_rounding="nearest"), exclude)
            return rounding.onnx(nearest, self.model, self.calibration.images, INPUT_NAME, threads)

        act = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8, "uint16": QuantType.QUInt16}[recipe.activation_type]
        self._n += 1
        out = self.dir / f"q{self._n}.onnx"
        try:
            with contextlib.redirect_stdout(_io.StringIO()):
                quantize_static(str(self.pre), str(out), None,
                                quant_format=QuantFormat.QDQ if recipe.quant_format == "QDQ" else QuantFormat.QOperator,
                                per_channel=recipe.per_channel, reduce_range=recipe.weight_bits == 7,
                                activation_type=act, weight_type=QuantType.QInt8,
                                calibrate_method=_method(recipe.calibration),
                                nodes_to_exclude=list(dict.fromkeys(self.head + tuple(exclude))),
                                calibration_cache_path=str(self.cache(recipe.calibration)))
        except Exception as exc:
            first = first_line(exc)
            raise EdgeclfError(f"ONNX quantization ({recipe.label()}) failed: {first}") from exc
        data = out.read_bytes()
        out.unlink()
        return data

    def groups(self, recipe: Recipe) -> list[tuple[str, ...]]:
        """Per activation tensor: its producer and consumers (the nodes to exclude to keep it float),
        worst first by the SQNR of its float activations against their own round trip at the scale and
        zero point ``recipe`` quantized as QDQ gives it (ranges are read from Q/DQ nodes whatever the format)."""
        import onnx
        import onnxruntime as ort

        q = onnx.load_from_string(self.quantize(replace(recipe, quant_format="QDQ")))
        consts = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
        qparams = {}
        for node in q.graph.node:
            if node.op_type == "QuantizeLinear" and node.input[1] in consts and len(node.input) > 2:
                scale, zp = consts[node.input[1]], consts.get(node.input[2])
                if zp is not None and np.ndim(scale) == 0:
                    qparams[node.input[0]] = (float(scale), int(zp), np.iinfo(zp.dtype))
        graph = self.model.graph
        producer = {o: n for n in graph.node for o in n.output}
        consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        watched = [t for t in qparams if t in producer]
        if not watched:
            return []
        probe = onnx.load(str(self.pre))
        known = {o.name for o in probe.graph.output}
        probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in watched if t not in known)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        signal = dict.fromkeys(watched, 0.0)
        noise = dict.fromkeys(watched, 0.0)
        for img in self.calibration.images[:SENSITIVITY_IMAGES]:
            outs = dict(zip(names, sess.run(None, {INPUT_NAME: img[None].astype(np.float32)})))
            for t in watched:
                a = outs[t].astype(np.float64)
                scale, zp, info = qparams[t]
                r = (np.clip(np.round(a / scale) + zp, info.min, info.max) - zp) * scale
                signal[t] += float(np.square(a).sum())
                noise[t] += float(np.square(a - r).sum())
        scored = []
        for t in watched:
            if signal[t] == 0:
                continue
            sqnr = 10 * np.log10(signal[t] / noise[t]) if noise[t] > 0 else float("inf")
            nodes = [producer[t]] + consumers.get(t, [])
            scored.append((sqnr, tuple(dict.fromkeys(n.name for n in nodes))))
        scored.sort(key=lambda g: g[0])
        return [g for _, g in scored]


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[name]


def _calib_options(method: str) -> dict:
    # Entropy's defaults leave one candidate range (it would equal MinMax): give the KL search room
    return {"num_bins": 512, "num_quantized_bins": 256} if method == "entropy" else {}


def node_label(node: str, layer_names: set[str], inputs: dict[str, list[str]] | None = None) -> str:
    """A readable name for an ONNX node: the Keras layer in its name or, for nodes tf2onnx renamed
    (``Conv__349``), in the name of its weights (``.../expanded_conv_project_1/convolution/...``)."""
    for text in [node] + list((inputs or {}).get(node, [])[1:2]):
        for part in text.split("/")[1:]:
            name = re.sub(r"_\d+$", "", part)
            if name in layer_names:
                return name
    return node
