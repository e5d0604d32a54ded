"""Normalisation layers with weights: batch normalisation and layer normalisation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from convcli.layers.base import (
    Context,
    Gradients,
    Layer,
    Shape,
    Unsupported,
    Value,
    grads,
    ops,
    read_bool,
    read_float,
    register,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def _last_axis(cfg: Mapping[str, Any], what: str, input_rank: int = 4) -> None:
    axis = cfg.get("axis", -1)
    if axis not in (-1, [-1], 3, [3]):
        raise Unsupported(f"{what} over axis={axis} (only the channels axis, -1)")


@dataclass(frozen=True, kw_only=True)
class _Normalizing(Layer):
    """What batch and layer normalisation share: epsilon, and a learned scale (gamma) and
    offset (beta) per channel that ``scale``/``center`` switch off."""

    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True
    keywords: ClassVar[tuple[str, ...]] = ("epsilon", "center", "scale")

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        return cls(name=name, epsilon=read_float("epsilon", args.get("epsilon", 1e-3)),
                   center=read_bool("center", args.get("center", True)),
                   scale=read_bool("scale", args.get("scale", True)))

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        _last_axis(cfg, keras_class)
        return cls(name=name, epsilon=read_float("epsilon", cfg.get("epsilon", 1e-3)),
                   center=read_bool("center", cfg.get("center", True)),
                   scale=read_bool("scale", cfg.get("scale", True)))

    def param_shapes(self, *input_shapes: Shape) -> dict[str, Shape]:
        d = input_shapes[0][-1]
        shapes: dict[str, Shape] = {}
        if self.scale:
            shapes["gamma"] = (d,)
        if self.center:
            shapes["beta"] = (d,)
        return shapes


@register
@dataclass(frozen=True, kw_only=True)
class BatchNormalization(_Normalizing):
    """Batch normalisation over the last axis: gamma (``scale``), beta (``center``), moving
    mean and variance (not trained)."""

    type: ClassVar[str] = "BatchNormalization"
    tokens: ClassVar[tuple[str, ...]] = ("BN",)
    prefix: ClassVar[str] = "bn"
    keras_classes: ClassVar[tuple[str, ...]] = ("BatchNormalization",)

    def param_shapes(self, *input_shapes: Shape) -> dict[str, Shape]:
        d = input_shapes[0][-1]
        return {**super().param_shapes(*input_shapes), "moving_mean": (d,), "moving_variance": (d,)}

    def trainable_params(self, *input_shapes: Shape) -> int:
        return input_shapes[0][-1] * (int(self.scale) + int(self.center))

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().batch_norm(xs[0], weights.get("gamma"), weights.get("beta"), weights["moving_mean"],
                                weights["moving_variance"], self.epsilon)

    has_backward: ClassVar[bool] = True
    momentum: ClassVar[float] = 0.99
    """Keras' moving-average momentum: moving = moving * momentum + batch * (1 - momentum)."""

    def forward_train(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray],
                      ctx: Context) -> tuple[np.ndarray, Any]:
        import numpy as np

        d = xs[0].shape[-1]
        gamma = weights.get("gamma", np.ones(d, xs[0].dtype))
        beta = weights.get("beta", np.zeros(d, xs[0].dtype))
        return grads().batch_norm_train(xs[0], gamma, beta, weights["moving_mean"], weights["moving_variance"],
                                        momentum=self.momentum, epsilon=self.epsilon)  # type: ignore[no-any-return]

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        dx, dgamma, dbeta = grads().batch_norm_backward(grad, saved)
        found = {}
        if self.scale:
            found["gamma"] = dgamma
        if self.center:
            found["beta"] = dbeta
        return Gradients([dx], found)

    def train_updates(self, saved: Any) -> dict[str, np.ndarray]:
        return {"moving_mean": saved.moving_mean, "moving_variance": saved.moving_variance}

    def frozen_params(self) -> tuple[str, ...]:
        return ("moving_mean", "moving_variance")


@register
@dataclass(frozen=True, kw_only=True)
class LayerNormalization(_Normalizing):
    """Normalises each position over its channels (ConvNeXt): gamma and beta per channel."""

    type: ClassVar[str] = "LayerNormalization"
    tokens: ClassVar[tuple[str, ...]] = ("LN", "LAYERNORM")
    prefix: ClassVar[str] = "ln"
    keras_classes: ClassVar[tuple[str, ...]] = ("LayerNormalization",)

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        if cfg.get("rms_scaling"):
            raise Unsupported("LayerNormalization with rms_scaling=true")
        return super().from_keras(name, cfg, keras_class)

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().layer_norm(xs[0], weights.get("gamma"), weights.get("beta"), epsilon=self.epsilon)

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        dx, dgamma, dbeta = grads().layer_norm_backward(xs[0], grad, weights.get("gamma"), epsilon=self.epsilon,
                                                        use_beta=self.center)
        found = {}
        if dgamma is not None:
            found["gamma"] = dgamma
        if dbeta is not None:
            found["beta"] = dbeta
        return Gradients([dx], found)
