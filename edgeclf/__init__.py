"""edgeclf: from a folder of labelled photos to a quantized image classifier on an edge device.

The public Python API is what the ``edgeclf`` commands call, one function each, with the settings dataclass it
takes (every default is written once, in ``edgeclf.config``, and the CLI reads it)::

    from edgeclf import TrainConfig, ExportOptions, BenchOptions, export_model, run_bench
    from edgeclf.train.trainer import train

    run = train(TrainConfig(data="flower_photos", model="mobilenet_v2"))        # edgeclf train
    result = export_model(ExportOptions(target=run.dir, int8=True))             # edgeclf export
    bench = run_bench(BenchOptions(exports=[result.out_dir], data="flower_photos"))      # edgeclf bench

On the device, ``edgeclf.runtime`` (numpy, OpenCV and one inference runtime; never TensorFlow)::

    from edgeclf.runtime import open_backend, Classifier

    clf = Classifier(open_backend("runs/train/exp/export"), top_k=3)
    clf.classify([rgb])                  # any-size RGB uint8 -> [Prediction(label, score, top_k, probs)]

The names in ``__all__`` are imported on first use: ``import edgeclf`` itself needs only the standard library
(``python -m edgeclf.datasets`` runs before anything is installed), and the runtime names never load TensorFlow.
Everything else is internal and may change between versions.
"""
from __future__ import annotations

import importlib

__all__ = [
    "TrainConfig", "ExportOptions", "BenchOptions",
    "scan", "export_model", "run_bench", "build_report", "load_bundle",
    "open_backend", "Classifier", "resolve_model", "run_source",
]

# name -> (module, attribute): resolved lazily (PEP 562)
_PUBLIC = {
    "TrainConfig": ("edgeclf.config", "TrainConfig"),
    "ExportOptions": ("edgeclf.config", "ExportOptions"),
    "BenchOptions": ("edgeclf.bench.rows", "BenchOptions"),
    "scan": ("edgeclf.data.dataset", "scan"),
    "export_model": ("edgeclf.convert.exporter", "export_model"),
    "run_bench": ("edgeclf.bench.core", "run_bench"),
    "build_report": ("edgeclf.page", "build"),
    "load_bundle": ("edgeclf.contract", "load_bundle"),
    "open_backend": ("edgeclf.runtime.backends", "open_backend"),
    "Classifier": ("edgeclf.runtime.loop", "Classifier"),
    "resolve_model": ("edgeclf.runtime.model", "resolve_model"),
    "run_source": ("edgeclf.runtime.loop", "run_source"),
}


def __getattr__(name: str):
    try:
        module, attr = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'edgeclf' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
