"""The optimizers that turn gradients into weight updates, with Keras' exact formulas.

The lecture's learning step moves every weight against its gradient. Three rules, by the
names ``convcli train --optimizer`` takes:

- ``sgd``: ``w -= lr * g`` (Keras ``SGD``, default learning rate 0.01);
- ``momentum``: Keras ``SGD(momentum=0.9)``: ``m = 0.9 * m - lr * g``; ``w += m``;
- ``adam``: Keras ``Adam`` (learning rate 0.001, beta_1 0.9, beta_2 0.999, epsilon 1e-7),
  as ``keras/src/optimizers/adam.py`` writes it: at step t (from 1),
  ``alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``, ``m += (g - m) * (1 - beta_1)``,
  ``v += (g^2 - v) * (1 - beta_2)``, ``w -= alpha * m / (sqrt(v) + epsilon)``. The epsilon
  is added to sqrt(v) before the bias correction of v (PyTorch's Adam adds it after, so
  the two differ slightly when sqrt(v) is near epsilon).

An optimizer updates a dict of named parameter arrays in place, keeping one state array per
name (moments start at zero, as Keras'); the arithmetic is in each parameter's dtype.

>>> weights = {"w": np.array([1.0, -2.0])}
>>> sgd = make_optimizer("sgd", 0.5)
>>> sgd.step(weights, {"w": np.array([2.0, -2.0])})
>>> weights["w"].tolist()
[0.0, -1.0]
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import numpy as np

from convcli.errors import InputError, ShapeError

__all__ = ["OPTIMIZERS", "SGD", "Adam", "Optimizer", "make_optimizer"]

OPTIMIZERS = ("sgd", "momentum", "adam")
"""The names :func:`make_optimizer` accepts."""


class Optimizer:
    """Base class: :meth:`step` applies one update to every named parameter."""

    name = "optimizer"

    def __init__(self, learning_rate: float) -> None:
        lr = float(learning_rate)
        if not np.isfinite(lr) or lr <= 0:
            raise InputError(f"The learning rate must be a positive number. Received: lr={learning_rate}")
        self.learning_rate = lr
        self.iterations = 0
        """Steps applied so far (Keras' ``optimizer.iterations``)."""

    def step(self, params: MutableMapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        """Update every array of ``params`` in place with the gradient of the same name.

        Raises:
            ShapeError: a gradient is missing, or its shape differs from its parameter's.
        """
        for key, value in params.items():
            if key not in grads:
                raise ShapeError(f"{self.name}: no gradient for parameter {key!r}")
            gradient = np.asarray(grads[key])
            if gradient.shape != value.shape:
                raise ShapeError(
                    f"{self.name}: the gradient of {key!r} has shape {gradient.shape}, "
                    f"the parameter {value.shape}"
                )
        for key, value in params.items():
            self._update(key, value, np.asarray(grads[key], dtype=value.dtype))
        self.iterations += 1

    def _update(self, key: str, value: np.ndarray, gradient: np.ndarray) -> None:
        raise NotImplementedError

    def _slot(self, slots: dict[str, np.ndarray], key: str, value: np.ndarray) -> np.ndarray:
        """The state array of ``key``, zeros the first time (Keras' optimizer variables)."""
        slot = slots.get(key)
        if slot is None or slot.shape != value.shape:
            slot = slots[key] = np.zeros_like(value)
        return slot


class SGD(Optimizer):
    """Stochastic gradient descent, with Keras' momentum form when ``momentum`` > 0:
    ``m = momentum * m - lr * g``; ``w += m`` (``w -= lr * g`` without momentum)."""

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0) -> None:
        super().__init__(learning_rate)
        if not 0.0 <= momentum <= 1.0:
            raise InputError(f"`momentum` must be in [0, 1]. Received: momentum={momentum}")
        self.momentum = float(momentum)
        self.name = "momentum" if momentum else "sgd"
        self.velocities: dict[str, np.ndarray] = {}

    def _update(self, key: str, value: np.ndarray, gradient: np.ndarray) -> None:
        lr = value.dtype.type(self.learning_rate)
        if self.momentum == 0.0:
            value -= gradient * lr
            return
        m = self._slot(self.velocities, key, value)
        m *= value.dtype.type(self.momentum)
        m -= gradient * lr
        value += m


class Adam(Optimizer):
    """Keras' Adam: see the module docstring for the exact update."""

    name = "adam"

    def __init__(
        self, learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7
    ) -> None:
        super().__init__(learning_rate)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.momentums: dict[str, np.ndarray] = {}
        self.velocities: dict[str, np.ndarray] = {}

    def _update(self, key: str, value: np.ndarray, gradient: np.ndarray) -> None:
        t = value.dtype.type
        step = t(self.iterations + 1)
        one = t(1)
        alpha = t(self.learning_rate) * np.sqrt(one - t(self.beta_2) ** step) / (one - t(self.beta_1) ** step)
        m = self._slot(self.momentums, key, value)
        v = self._slot(self.velocities, key, value)
        m += (gradient - m) * (one - t(self.beta_1))
        v += (np.square(gradient) - v) * (one - t(self.beta_2))
        value -= (m * alpha) / (np.sqrt(v) + t(self.epsilon))


def make_optimizer(name: str, learning_rate: float | None = None) -> Optimizer:
    """The optimizer called ``name`` (sgd, momentum, adam) with Keras' default learning rate
    (0.01 for sgd and momentum, 0.001 for adam) unless one is given.

    Raises:
        InputError: an unknown name or a learning rate that is not positive.
    """
    key = name.strip().lower()
    if key == "sgd":
        return SGD(0.01 if learning_rate is None else learning_rate)
    if key == "momentum":
        return SGD(0.01 if learning_rate is None else learning_rate, momentum=0.9)
    if key == "adam":
        return Adam(0.001 if learning_rate is None else learning_rate)
    raise InputError(
        f"Unknown value for `optimizer`. Allowed values are: {', '.join(OPTIMIZERS)}. Received: optimizer={name}"
    )
