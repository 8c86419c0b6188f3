"""``edgeclf bench``: accuracy, latency, size and memory of every exported model, side by side.

    from edgeclf.bench import BenchOptions, run_bench
    result = run_bench(BenchOptions(exports=["runs/train/exp/export"], data="photos/", out="runs/bench/exp"))

Measures through the same runtime backends ``edgeclf run`` uses (:mod:`edgeclf.runtime`), each model in
a process of its own (:mod:`edgeclf.bench.worker`), on this machine and on ``--remote`` devices over SSH
(:mod:`edgeclf.bench.remote`, :mod:`edgeclf.bench.agent`). Never imports TensorFlow.
"""
from __future__ import annotations


def __getattr__(name: str):
    # Lazy: `python -m edgeclf.bench.worker` imports this package and must stay light.
    if name in ("BenchOptions", "BenchResult", "BenchRow", "run_bench", "DEFAULT_LOG", "DEFAULT_PROJECT", "EXIT_BELOW"):
        from edgeclf.bench import core

        return getattr(core, name)
    raise AttributeError(name)


__all__ = ["BenchOptions", "BenchResult", "BenchRow", "run_bench"]
