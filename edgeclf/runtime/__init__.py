"""The on-device runtime: numpy, OpenCV and one inference runtime. Never TensorFlow.

Public API (what ``edgeclf run`` and ``edgeclf bench`` use)::

    from edgeclf.runtime import open_backend, Classifier, ModelRef, resolve_model

    backend = open_backend("runs/train/exp/export", backend="auto", artifact=None, threads=None, provider="cpu")
    probs = backend.predict(batch)       # batch: uint8 (N, H, W, 3) RGB at backend.height x backend.width
                                         # -> float32 (N, num_classes) probabilities, in backend.model.classes order
    tensor = backend.prepare(batch)      # the model's own input tensor (float32 0..255 or quantized)
    probs = backend.infer(tensor)        # the bare invoke + dequantize: what a latency benchmark times

    clf = Classifier(backend, top_k=3, threshold=0.0)
    clf.classify([rgb, ...])             # any-size RGB uint8 -> [Prediction(label, score, top_k, probs)]

    bundle = load_bundle("export/")      # every artifact of an export folder, one after another:
    for art in bundle.artifacts:
        b = open_backend(ModelRef.from_bundle(bundle, art), threads=2)

Modules import OpenCV and the inference runtimes lazily where it is cheap to do so.
"""
from edgeclf.runtime.backends import (BACKEND_NAMES, BACKENDS, PROVIDERS, Backend, BackendUnavailable, LiteRTBackend,
                                      OnnxRuntimeBackend, OpenCVDnnBackend, default_threads, open_backend)
from edgeclf.runtime.loop import Classifier, RunOptions, RunSummary, run_source
from edgeclf.runtime.model import ARTIFACT_PREFERENCE, ModelLoadError, ModelNotFound, ModelRef, resolve_model
from edgeclf.runtime.output import Prediction, make_prediction
from edgeclf.runtime.cameras import LiveSource
from edgeclf.runtime.frames import Frame, Preprocess, Source, SourceError
from edgeclf.runtime.sources import open_source

__all__ = [
    "ARTIFACT_PREFERENCE", "BACKEND_NAMES", "BACKENDS", "PROVIDERS", "Backend", "BackendUnavailable", "Classifier",
    "Frame", "LiteRTBackend", "LiveSource", "ModelLoadError", "ModelNotFound", "ModelRef", "OnnxRuntimeBackend",
    "OpenCVDnnBackend", "Prediction", "Preprocess", "RunOptions", "RunSummary", "Source", "SourceError",
    "default_threads", "make_prediction", "open_backend", "open_source", "resolve_model", "run_source",
]
