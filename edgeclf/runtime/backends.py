"""Inference backends: one small class each, one interface. No TensorFlow (except LiteRT's last fallback).

Every backend takes what the export contract says every model takes -- a batch of RGB uint8 images of
the model's height x width, NHWC -- and returns float32 probabilities, one row per image::

    backend = open_backend("runs/train/exp/export")            # or a .tflite / .onnx file
    probs = backend.predict(batch_uint8_nhwc)                   # (N, num_classes) float32

Casting or quantizing the input (with the input tensor's *own* scale and zero point, read from the
loaded model, not from a JSON that could disagree) and dequantizing the output happen here, once.
"""
from __future__ import annotations

import os
import time
import warnings
from typing import ClassVar

import numpy as np

from edgeclf.contract import ContractError, TensorSpec
from edgeclf.errors import EdgeclfError, first_line
from edgeclf.runtime.model import ModelLoadError, ModelRef, resolve_model

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class BackendUnavailable(EdgeclfError):
    """The asked-for inference runtime (or execution provider) is not installed here."""


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def input_lut(spec: TensorSpec) -> np.ndarray | None:
    """Table mapping each uint8 pixel to the model's quantized input: q = round(x/scale + zp), clipped.

    ``None`` for a float input. One table lookup per image is exact and costs next to nothing.
    """
    if spec.dtype == "float32":
        return None
    info = np.iinfo(np.dtype(spec.dtype))
    scale = spec.scale or 1.0
    q = np.round(np.arange(256, dtype=np.float64) / scale + (spec.zero_point or 0))
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def dequantize(q: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.dtype == "float32":
        return q.astype(np.float32, copy=False)
    return ((q.astype(np.float32) - float(spec.zero_point or 0)) * float(spec.scale or 1.0)).astype(np.float32)


class Backend:
    """One inference runtime running one model.

    Attributes set by :meth:`load`: ``input_spec``/``output_spec`` (dtype, scale, zero point as the
    loaded model reports them), ``height``/``width`` (model input), ``num_classes``, ``engine``
    (e.g. ``"ai_edge_litert 2.3.0"``). ``model`` is the :class:`ModelRef` (file + contract).
    """

    name: ClassVar[str] = ""
    formats: ClassVar[tuple[str, ...]] = ()  # the contract formats it runs
    install: ClassVar[str] = ""  # the pip package that provides it
    modules: ClassVar[tuple[str, ...]] = ()  # the modules its runtime lives in (any one of them)

    def __init__(self, model: ModelRef, threads: int | None = None):
        self.model = model
        self.threads = threads or default_threads()
        self.engine = ""
        self.input_spec = TensorSpec("float32")
        self.output_spec = TensorSpec("float32")
        self.height = model.bundle.input.height
        self.width = model.bundle.input.width
        self.num_classes = 0
        self.load_ms = 0.0
        self._lut: np.ndarray | None = None

    @classmethod
    def available(cls) -> bool:
        raise NotImplementedError

    def load(self) -> "Backend":
        """Load the model, read its tensors, check them against the contract, warm up once."""
        t0 = time.perf_counter()
        self._load()
        self._lut = input_lut(self.input_spec)
        probs = self.predict(np.zeros((1, self.height, self.width, 3), np.uint8))  # warm-up + output check
        self.num_classes = int(probs.shape[-1])
        classes = self.model.classes
        if self.num_classes != len(classes):
            raise ContractError(f"{self.model.path}: the model outputs {self.num_classes} scores but its labels "
                                f"name {len(classes)} classes ({', '.join(classes[:5])}"
                                f"{', ...' if len(classes) > 5 else ''}): labels and model do not belong together")
        self.load_ms = (time.perf_counter() - t0) * 1000
        return self

    def _load(self) -> None:
        raise NotImplementedError

    def clone(self, threads: int) -> "Backend":
        """Another loaded instance of the same model and runtime, with ``threads`` threads."""
        return type(self)(self.model, threads).load()

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """uint8 NHWC RGB -> the model's input tensor (float32 0..255, or quantized integers)."""
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"expected uint8 (N, {self.height}, {self.width}, 3), got {batch.dtype} {batch.shape}")
        if self._lut is None:
            return batch.astype(np.float32)
        if not batch.size:
            return batch.astype(self._lut.dtype)
        import cv2  # cv2.LUT: ~5x faster than numpy's lut[batch] on a 224x224 image

        flat = np.ascontiguousarray(batch).reshape(-1, batch.shape[2] * 3)
        return cv2.LUT(flat, self._lut).reshape(batch.shape)

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """The model's own input tensor -> float32 probabilities (N, C). The bare invoke, no casting."""
        raise NotImplementedError

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """RGB uint8 images (N, H, W, 3) at the model's input size -> float32 probabilities (N, C)."""
        return self.infer(self.prepare(batch))

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"{self.engine}, {self.threads} thread{'s' * (self.threads != 1)}"


def _spec_from(dtype, quantization) -> TensorSpec:
    name = np.dtype(dtype).name
    if name == "float32":
        return TensorSpec("float32")
    if name not in ("int8", "uint8"):
        raise ModelLoadError(f"unsupported tensor type {name}: edgeclf models take float32, int8 or uint8")
    scale, zero_point = quantization
    return TensorSpec(name, float(scale) or 1.0, int(zero_point))


class LiteRTBackend(Backend):
    """TFLite models through ``ai_edge_litert``, else ``tflite_runtime``, else ``tensorflow.lite``."""

    name = "litert"
    formats = ("tflite",)
    install = "ai-edge-litert"
    modules = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")

    @staticmethod
    def _interpreter_class():
        try:
            from ai_edge_litert.interpreter import Interpreter
            import ai_edge_litert

            return Interpreter, f"ai_edge_litert {getattr(ai_edge_litert, '__version__', '')}".strip()
        except ImportError:
            pass
        try:
            from tflite_runtime.interpreter import Interpreter
            import tflite_runtime

            return Interpreter, f"tflite_runtime {getattr(tflite_runtime, '__version__', '')}".strip()
        except ImportError:
            pass
        try:  # the only TensorFlow reference in the runtime: used when it is all there is
            import tensorflow as tf

            return tf.lite.Interpreter, f"tensorflow.lite {tf.__version__}"
        except ImportError:
            return None, ""

    @classmethod
    def available(cls) -> bool:
        import importlib.util

        return any(importlib.util.find_spec(m) is not None for m in ("ai_edge_litert", "tflite_runtime"))

    def _load(self) -> None:
        Interpreter, self.engine = self._interpreter_class()
        if Interpreter is None:
            raise BackendUnavailable("no TFLite runtime installed: pip install ai-edge-litert "
                                     "(or tflite-runtime), or run the .onnx with --backend onnxruntime")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tensorflow.lite's deprecation notice
                self._it = Interpreter(model_path=str(self.model.path), num_threads=self.threads)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            first = first_line(exc)
            raise ModelLoadError(f"{self.model.path}: LiteRT cannot load it ({first})") from exc
        inputs, outputs = self._it.get_input_details(), self._it.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(f"{self.model.path}: expected one input and one output, "
                                 f"found {len(inputs)} and {len(outputs)}")
        i, o = inputs[0], outputs[0]
        shape = tuple(int(s) for s in i["shape"])
        if len(shape) != 4 or shape[3] != 3:
            raise ContractError(f"{self.model.path}: input shape {list(shape)} is not NHWC RGB")
        if (shape[1], shape[2]) != (self.height, self.width):
            raise ContractError(f"{self.model.path}: model input is {shape[1]}x{shape[2]} but its contract says "
                                f"{self.height}x{self.width}")
        self._in, self._out = i["index"], o["index"]
        self._batch = shape[0]
        self.input_spec = _spec_from(i["dtype"], i["quantization"])
        self.output_spec = _spec_from(o["dtype"], o["quantization"])

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        it = self._it
        if len(tensor) == self._batch:
            it.set_tensor(self._in, tensor)
            it.invoke()
            return dequantize(it.get_tensor(self._out), self.output_spec).reshape(len(tensor), -1)
        rows = []
        for k in range(0, len(tensor), self._batch):  # the exported graph has a fixed batch (1)
            it.set_tensor(self._in, tensor[k:k + self._batch])
            it.invoke()
            rows.append(dequantize(it.get_tensor(self._out), self.output_spec).reshape(self._batch, -1))
        return np.concatenate(rows)

    def close(self) -> None:
        self._it = None


class OnnxRuntimeBackend(Backend):
    """ONNX models through ONNX Runtime, on CPU, CUDA or TensorRT (Jetson)."""

    name = "onnxruntime"
    formats = ("onnx",)
    install = "onnxruntime"
    modules = ("onnxruntime",)

    def __init__(self, model: ModelRef, threads: int | None = None, provider: str = "cpu"):
        super().__init__(model, threads)
        self.provider = provider

    def clone(self, threads: int) -> "Backend":
        return OnnxRuntimeBackend(self.model, threads, self.provider).load()

    @classmethod
    def available(cls) -> bool:
        import importlib.util

        return importlib.util.find_spec("onnxruntime") is not None

    def _load(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime "
                                     "(onnxruntime-gpu on a Jetson), or use --backend opencv") from exc
        if self.provider not in PROVIDERS:
            raise BackendUnavailable(f"unknown provider {self.provider!r}; expected one of {', '.join(PROVIDERS)}")
        wanted = PROVIDERS[self.provider]
        have = ort.get_available_providers()
        if wanted[0] not in have:
            raise BackendUnavailable(f"provider {self.provider} ({wanted[0]}) is not available in this onnxruntime "
                                     f"{ort.__version__}; available: {', '.join(have)}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(str(self.model.path), sess_options=opts,
                                              providers=[p for p in wanted if p in have])
        except Exception as exc:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
            first = first_line(exc)
            raise ModelLoadError(f"{self.model.path}: ONNX Runtime cannot load it ({first})") from exc
        self.engine = f"onnxruntime {ort.__version__} {self._sess.get_providers()[0]}"
        inputs, outputs = self._sess.get_inputs(), self._sess.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(f"{self.model.path}: expected one input and one output, "
                                 f"found {len(inputs)} and {len(outputs)}")
        i = inputs[0]
        shape = list(i.shape)
        if len(shape) != 4 or shape[3] != 3:
            raise ContractError(f"{self.model.path}: input shape {shape} is not NHWC RGB")
        if all(isinstance(s, int) for s in shape[1:3]) and tuple(shape[1:3]) != (self.height, self.width):
            raise ContractError(f"{self.model.path}: model input is {shape[1]}x{shape[2]} but its contract says "
                                f"{self.height}x{self.width}")
        self._in_name, self._out_name = i.name, outputs[0].name
        self._batch = shape[0] if isinstance(shape[0], int) else None
        types = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}
        dtype = types.get(i.type)
        if dtype is None:
            raise ModelLoadError(f"{self.model.path}: input type {i.type} is not float32, int8 or uint8")
        # ONNX graph inputs carry no quantization parameters: an integer input takes them from the contract.
        spec = self.model.artifact.input
        self.input_spec = TensorSpec(dtype, spec.scale or 1.0, spec.zero_point or 0) if dtype != "float32" \
            else TensorSpec("float32")
        out_spec = self.model.artifact.output
        self.output_spec = out_spec if out_spec.dtype != "float32" else TensorSpec("float32")

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        if self._batch is None or len(tensor) == self._batch:
            out = self._sess.run([self._out_name], {self._in_name: tensor})[0]
            return dequantize(out, self.output_spec).reshape(len(tensor), -1)
        return np.concatenate([self.infer(tensor[k:k + self._batch]) for k in range(0, len(tensor), self._batch)])

    def close(self) -> None:
        self._sess = None


class OpenCVDnnBackend(Backend):
    """ONNX models through OpenCV's DNN module: no dependency beyond OpenCV itself (float input only)."""

    name = "opencv"
    formats = ("onnx",)
    install = "opencv-python-headless"
    modules = ("cv2",)

    @classmethod
    def available(cls) -> bool:
        try:
            import cv2

            return hasattr(cv2, "dnn")
        except ImportError:
            return False

    def _load(self) -> None:
        import cv2

        cv2.setNumThreads(self.threads)
        try:
            self._net = cv2.dnn.readNetFromONNX(str(self.model.path))
        except cv2.error as exc:
            # OpenCV 5's new engine refuses QDQ (QuantizeLinear/DequantizeLinear) graphs that its classic
            # engine runs; older OpenCV has no engine argument
            classic = getattr(cv2.dnn, "ENGINE_CLASSIC", None)
            try:
                if classic is None:
                    raise exc
                self._net = cv2.dnn.readNetFromONNX(str(self.model.path), classic)
            except cv2.error:
                lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                raise ModelLoadError(f"{self.model.path}: OpenCV DNN cannot load it "
                                     f"({(lines[-1] if lines else 'cv2.error').strip()})") from exc
        if self._net.empty():
            raise ModelLoadError(f"{self.model.path}: OpenCV DNN loaded an empty network")
        self.engine = f"opencv-dnn {cv2.__version__}"
        if self.model.artifact.input.dtype != "float32":
            raise ModelLoadError(f"{self.model.path}: OpenCV DNN runs float-input ONNX only; use --backend onnxruntime")

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        import cv2

        try:
            self._net.setInput(np.ascontiguousarray(tensor, dtype=np.float32))
            out = self._net.forward()
        except cv2.error as exc:
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            raise ModelLoadError(f"{self.model.path}: OpenCV DNN cannot run it "
                                 f"({(lines[-1] if lines else 'cv2.error').strip()})") from exc
        return dequantize(np.asarray(out), self.output_spec).reshape(len(tensor), -1)

    def close(self) -> None:
        self._net = None


BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (LiteRTBackend, OnnxRuntimeBackend, OpenCVDnnBackend)}
BACKEND_NAMES = ("auto", *BACKENDS)  # what --backend accepts
# `--backend auto`: for each format, the runtimes to try in order.
AUTO_ORDER: dict[str, tuple[str, ...]] = {"tflite": ("litert",), "onnx": ("onnxruntime", "opencv")}


def _installed_formats() -> tuple[str, ...]:
    return tuple(fmt for fmt, names in AUTO_ORDER.items() if any(BACKENDS[n].available() for n in names))


def open_backend(model: str | os.PathLike | ModelRef, backend: str = "auto", *, artifact: str | None = None,
                 threads: int | None = None, provider: str = "cpu") -> Backend:
    """Open a model and return its loaded :class:`Backend`.

    ``model``: an export folder, a .tflite/.onnx file, or a :class:`ModelRef` (e.g.
    ``ModelRef.from_bundle(bundle, artifact)`` to run every artifact of a bundle in turn).
    ``backend``: ``auto`` (by file type and what is installed), ``litert``, ``onnxruntime`` or ``opencv``.
    ``artifact``: in an export folder, which one (``tflite-int8``, ``onnx-fp32``, or a file name); by
    default the first of :data:`~edgeclf.runtime.model.ARTIFACT_PREFERENCE` the backend can run.
    ``threads``: CPU threads for inference (default: all cores). ``provider``: ONNX Runtime's
    ``cpu``, ``cuda`` or ``tensorrt``.
    Raises :class:`~edgeclf.errors.EdgeclfError` subclasses with one-line messages.
    """
    if backend not in BACKEND_NAMES:
        raise BackendUnavailable(f"unknown backend {backend!r}; expected one of {', '.join(BACKEND_NAMES)}")
    formats = BACKENDS[backend].formats if backend != "auto" else (_installed_formats() or None)
    ref = resolve_model(model, artifact=artifact, formats=formats)
    if backend == "auto":
        names = [n for n in AUTO_ORDER[ref.format] if BACKENDS[n].available()]
        if not names:
            raise BackendUnavailable(f"no runtime for {ref.format} models is installed: "
                                     f"{'pip install ai-edge-litert' if ref.format == 'tflite' else 'pip install onnxruntime'}")
        if ref.format == "onnx" and provider != "cpu" and "onnxruntime" in names:
            names = ["onnxruntime"]
        backend = names[0]
    cls = BACKENDS[backend]
    if ref.format not in cls.formats:
        raise BackendUnavailable(f"--backend {backend} runs {'/'.join(cls.formats)} models, not {ref.path.name}")
    if provider != "cpu" and cls is not OnnxRuntimeBackend:
        raise BackendUnavailable(f"--provider {provider} is for the onnxruntime backend (this is {backend})")
    instance = cls(ref, threads, provider) if cls is OnnxRuntimeBackend else cls(ref, threads)
    return instance.load()
