"""The optimizer of a training stage, with an optional warmed-up moving average of the weights.

``--ema M`` keeps an exponential moving average of the trainable weights (Polyak averaging) through Keras'
own ``use_ema``. Keras' average starts at the initial weights with momentum ``M`` from the second step, so
a short run would validate an average that has barely left its start; here the momentum warms up as
TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` does: ``min(M, (1 + t) / (10 + t))`` at step
``t``, so the first steps are averaged nearly evenly and the horizon grows to ``1 / (1 - M)`` steps.
Imports Keras: only the training path imports this module.
"""
from __future__ import annotations

import keras
from keras import ops


class _WarmEMA:
    """Mixin over a Keras optimizer: the moving average's momentum warms up with the step count."""

    def _update_model_variables_moving_average(self, trainable_variables):
        if not self.use_ema:
            return
        t = ops.cast(self.iterations, "float32")
        momentum = ops.minimum(ops.cast(self.ema_momentum, "float32"), (1.0 + t) / (10.0 + t))
        for var, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                m = ops.cast(momentum, var.dtype)
                average.assign(m * average + (1 - m) * var)


@keras.saving.register_keras_serializable("edgeclf")
class WarmEMAAdam(_WarmEMA, keras.optimizers.Adam):
    pass


@keras.saving.register_keras_serializable("edgeclf")
class WarmEMARMSprop(_WarmEMA, keras.optimizers.RMSprop):
    pass


def make_optimizer(name: str, lr: float, ema: float):
    """``adam`` or ``rmsprop`` at ``lr``; with ``ema`` > 0, keeping the warmed-up average of the weights
    (swap it in for validation and checkpoints with ``keras.callbacks.SwapEMAWeights(swap_on_epoch=True)``)."""
    if not ema:
        return (keras.optimizers.Adam if name == "adam" else keras.optimizers.RMSprop)(lr)
    return (WarmEMAAdam if name == "adam" else WarmEMARMSprop)(lr, use_ema=True, ema_momentum=ema)
