"""Where training runs: one device, several GPUs of one host, or several hosts -- tf.distribute.

* one host, several GPUs: ``tf.distribute.MirroredStrategy``;
* several hosts (``--distributed``, or ``TF_CONFIG`` naming more than one task):
  ``tf.distribute.MultiWorkerMirroredStrategy``. Every worker runs the same ``edgeclf train`` command
  with its own ``TF_CONFIG``; each caches the features of its share of the images; the top trains
  data-parallel (gradients all-reduced every step); only the chief (``task`` ``chief``, else worker 0)
  writes the run folder. After a kill, the cluster is started again with the same commands: the chief
  resumes its run folder and sends its state and weights to every worker.

``parse_tf_config`` needs no TensorFlow; :func:`make_cluster` creates the strategy, which must happen
before TensorFlow runs anything else.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from edgeclf.errors import EdgeclfError
from edgeclf.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    workers: int  # tasks that train (chief + workers)
    rank: int  # 0 is the chief
    task: str  # "chief:0", "worker:1", ...


def parse_tf_config(text: str | None = None) -> TaskSpec | None:
    """The cluster ``TF_CONFIG`` describes (None when unset or a single task)."""
    text = os.environ.get("TF_CONFIG", "") if text is None else text
    if not text.strip():
        return None
    try:
        conf = json.loads(text)
        cluster, task = conf["cluster"], conf["task"]
        kind, index = str(task["type"]), int(task["index"])
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
    except (ValueError, KeyError, TypeError) as exc:
        raise EdgeclfError(f"TF_CONFIG is not valid: {exc} (expected {{\"cluster\": {{\"worker\": [\"host:port\", "
                           f"...]}}, \"task\": {{\"type\": \"worker\", \"index\": 0}}}})") from None
    if len(chiefs) > 1:
        raise EdgeclfError("TF_CONFIG: a cluster has at most one chief")
    if kind not in ("chief", "worker"):
        raise EdgeclfError(f"TF_CONFIG: task type {kind!r} does not train here (use chief or worker)")
    size = {"chief": len(chiefs), "worker": len(workers)}[kind]
    if not 0 <= index < size:
        raise EdgeclfError(f"TF_CONFIG: task index {index} is not in the cluster's {size} {kind} task(s)")
    total = len(chiefs) + len(workers)
    if total < 2:
        return None
    rank = 0 if kind == "chief" else index + len(chiefs)
    return TaskSpec(total, rank, f"{kind}:{index}")


class ClusterError(EdgeclfError):
    """A worker of the cluster went away: start every worker again, the run resumes."""

    exit_code = 75  # EX_TEMPFAIL: try again


def peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is how TensorFlow reports a worker that stopped answering."""
    import tensorflow as tf

    return isinstance(exc, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                            tf.errors.CancelledError))


class Cluster:
    """The strategy, and this process's place in it; collective helpers that are no-ops on one worker."""

    def __init__(self, strategy, spec: TaskSpec | None):
        self.strategy = strategy
        self.workers = spec.workers if spec else 1
        self.rank = spec.rank if spec else 0
        self.task = spec.task if spec else "local"

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def local_replicas(self) -> int:
        return max(1, self.replicas // self.workers)

    @property
    def distributed(self) -> bool:
        return self.replicas > 1

    def scope(self):
        return self.strategy.scope()

    def reduce(self, value: np.ndarray, op: str = "SUM") -> np.ndarray:
        """``value`` (one per worker) reduced over the workers: SUM (an all-reduce), MAX or MIN."""
        value = np.asarray(value)
        if self.workers == 1:
            return value
        import tensorflow as tf

        dtype = value.dtype
        x = tf.constant(value.astype(np.float64 if dtype.kind in "iub" else dtype))
        if op == "SUM":  # every local replica returns the worker's value: divide by their number
            out = self.strategy.reduce("SUM", self.strategy.run(lambda: tf.identity(x)), axis=None).numpy()
            out = out / self.local_replicas
        else:  # the collective reduce knows SUM and MEAN only: gather the (small) values instead
            every = self.strategy.gather(self.strategy.run(lambda: tf.expand_dims(x, 0)), axis=0).numpy()
            out = every.max(axis=0) if op == "MAX" else every.min(axis=0)
        return out.astype(dtype)

    def same_everywhere(self, value: int, what: str) -> None:
        """Fail on every worker, with one line, unless all workers hold the same ``value``."""
        if self.workers == 1:
            return
        v = np.array([value], np.float64)
        if self.reduce(v, "MIN")[0] != self.reduce(v, "MAX")[0]:
            raise EdgeclfError(f"the workers of this cluster disagree on {what}: give every worker the same "
                               f"command and the same data")

    def broadcast_json(self, obj):
        """The chief's ``obj`` (JSON-able), on every worker."""
        if self.workers == 1:
            return obj
        data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if self.is_chief else np.zeros(0, np.uint8)
        n = int(self.reduce(np.array([len(data)], np.int64), "MAX")[0])
        buf = np.zeros(n, np.int64)
        buf[:len(data)] = data
        return json.loads(self.reduce(buf, "SUM").astype(np.uint8).tobytes().decode())

    def broadcast_weights(self, model) -> None:
        """Give every worker the chief's weights (after the chief loaded a checkpoint)."""
        if self.workers == 1:
            return
        weights = model.get_weights()
        sizes = [w.size for w in weights]
        flat = (np.concatenate([w.ravel().astype(np.float32) for w in weights]) if self.is_chief
                else np.zeros(sum(sizes), np.float32))
        flat = self.reduce(flat, "SUM")
        out, pos = [], 0
        for w, n in zip(weights, sizes):
            out.append(flat[pos:pos + n].reshape(w.shape).astype(w.dtype))
            pos += n
        model.set_weights(out)


def make_cluster(distributed: bool = False) -> Cluster:
    """The strategy for this process: MultiWorkerMirroredStrategy for a cluster (``distributed`` or a
    multi-task ``TF_CONFIG``), MirroredStrategy for several local GPUs, else the default."""
    import tensorflow as tf

    spec = parse_tf_config()
    if distributed and spec is None:
        raise EdgeclfError("--distributed needs TF_CONFIG naming the cluster's workers and this task "
                           "(see the README: several machines)")
    if spec is not None:
        _patch_keras_for_multi_worker()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        log.info(f"cluster: {spec.workers} workers, this is {spec.task}"
                 + (" (chief)" if spec.rank == 0 else "") + f", {strategy.num_replicas_in_sync} replicas in sync")
        return Cluster(strategy, spec)
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        log.info(f"{len(gpus)} GPUs: MirroredStrategy, {strategy.num_replicas_in_sync} replicas")
        return Cluster(strategy, None)
    return Cluster(tf.distribute.get_strategy(), None)


_patched = False


def _patch_keras_for_multi_worker() -> None:
    """Two Keras 3 bugs stop ``Model.fit`` under MultiWorkerMirroredStrategy (keras-team/keras#20585,
    tensorflow/tensorflow#72388); each fix is the smallest that makes it run:

    * before the first step, Keras reduces a distributed input batch with ``strategy.reduce`` only to
      learn its shapes, which the collective strategy cannot do for a tuple: take the local batch;
    * step outputs are averaged across workers with ``strategy.reduce("MEAN", v, axis=0)``, which fails
      for the scalar losses and metrics: average scalars with ``axis=None``.

    The epoch logs callbacks see are the metrics' variables read across replicas (summed), the same on
    every worker, so early stopping and checkpointing decide alike everywhere.
    """
    global _patched
    if _patched:
        return
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            def one(v):
                if getattr(getattr(v, "shape", None), "rank", None) == 0 or (
                        isinstance(v, tf.distribute.DistributedValues)
                        and strategy.experimental_local_results(v)[0].shape.rank == 0):
                    return strategy.reduce("MEAN", v, axis=None)
                return original_reduce(v, strategy, reduction)

            return tf.nest.map_structure(one, values)
        return original_reduce(values, strategy, reduction)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: (self.distribute_strategy.experimental_local_results(v)[0]
                               if isinstance(v, tf.distribute.DistributedValues) else v), next(it))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    _patched = True
