"""Dense, flatten, dropout, activations, rescaling and the other element-wise layers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from convcli.errors import ModelError, ShapeError
from convcli.layers.base import (
    ACTIVATIONS,
    Context,
    Gradients,
    Layer,
    Shape,
    Spatial,
    Unsupported,
    Value,
    activate_train,
    activation_grad,
    grads,
    ops,
    read_activation,
    read_bool,
    read_float,
    read_int,
    register,
    shape_text,
)
from convcli.layers.conv import check_positive, finishing, fused_alpha

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


@register
@dataclass(frozen=True, kw_only=True)
class Dense(Layer):
    """A fully connected layer (the lecture's FC). As in Keras, it acts on the last axis: a
    flat input (units,) is the lecture's case; (H, W, D) applies it at every position."""

    units: int
    use_bias: bool = True
    activation: str | None = None
    type: ClassVar[str] = "Dense"
    spatial: ClassVar[Spatial] = "global"
    tokens: ClassVar[tuple[str, ...]] = ("FC", "DENSE")
    prefix: ClassVar[str] = "fc"
    positional: ClassVar[tuple[str, ...]] = ("units",)
    required: ClassVar[int] = 1
    keywords: ClassVar[tuple[str, ...]] = ("activation", "bias")
    keras_classes: ClassVar[tuple[str, ...]] = ("Dense",)

    def __post_init__(self) -> None:
        check_positive(self.name, units=self.units)
        if self.activation is not None:
            read_activation(self.activation)

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        return cls(name=name, units=read_int("units", args["units"]),
                   use_bias=read_bool("bias", args.get("bias", True)),
                   activation=read_activation(args.get("activation")))

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        return cls(name=name, units=read_int("units", cfg.get("units")),
                   use_bias=read_bool("use_bias", cfg.get("use_bias", True)),
                   activation=read_activation(cfg.get("activation")))

    def spatial_kind(self, *input_shapes: Shape) -> Spatial:
        return "global" if len(input_shapes[0]) == 1 else "pointwise"

    def output_shape(self, *input_shapes: Shape) -> Shape:
        return (*input_shapes[0][:-1], self.units)

    def param_shapes(self, *input_shapes: Shape) -> dict[str, Shape]:
        shapes: dict[str, Shape] = {"kernel": (input_shapes[0][-1], self.units)}
        if self.use_bias:
            shapes["bias"] = (self.units,)
        return shapes

    def macs(self, *input_shapes: Shape) -> int:
        return math.prod(input_shapes[0]) * self.units

    @property
    def activation_name(self) -> str | None:
        return self.activation

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        x = xs[0]
        flat = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
        out = ops().dense(flat, weights["kernel"], weights.get("bias"), **finishing(self, ctx))
        return out.reshape(*x.shape[:-1], self.units) if x.ndim != 2 else out

    has_backward: ClassVar[bool] = True

    def forward_train(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray],
                      ctx: Context) -> tuple[np.ndarray, Any]:
        x = xs[0]
        z = ops().dense(x.reshape(-1, x.shape[-1]), weights["kernel"], weights.get("bias"))
        out, saved = activate_train(z, self.activation, fused_alpha(self.activation))
        return out.reshape(*x.shape[:-1], self.units), saved

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        x = xs[0]
        g = grad.reshape(-1, self.units)
        g = activation_grad(self.activation, fused_alpha(self.activation), saved, g)
        dx, dkernel, dbias = grads().dense_backward(x.reshape(-1, x.shape[-1]), weights["kernel"], g,
                                                    use_bias=self.use_bias, input_gradient=need_input)
        found = {"kernel": dkernel} if dbias is None else {"kernel": dkernel, "bias": dbias}
        return Gradients([None if dx is None else dx.reshape(x.shape)], found)


@register
@dataclass(frozen=True, kw_only=True)
class Flatten(Layer):
    """(H, W, D) -> (H*W*D,) in channels-last order."""

    type: ClassVar[str] = "Flatten"
    spatial: ClassVar[Spatial] = "global"
    tokens: ClassVar[tuple[str, ...]] = ("FLATTEN",)
    prefix: ClassVar[str] = "flatten"
    keras_classes: ClassVar[tuple[str, ...]] = ("Flatten",)

    def output_shape(self, *input_shapes: Shape) -> Shape:
        return (math.prod(input_shapes[0]),)

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return xs[0].reshape(len(xs[0]), -1)

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        return Gradients([grads().flatten_backward(xs[0].shape, grad)], {})


@register
@dataclass(frozen=True, kw_only=True)
class Dropout(Layer):
    """Dropout with probability ``rate`` (the identity at inference)."""

    rate: float = 0.5
    type: ClassVar[str] = "Dropout"
    tokens: ClassVar[tuple[str, ...]] = ("DO", "DROPOUT")
    prefix: ClassVar[str] = "dropout"
    positional: ClassVar[tuple[str, ...]] = ("rate",)
    keras_classes: ClassVar[tuple[str, ...]] = ("Dropout",)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ModelError(
                f"layer '{self.name}': `rate` must be in [0, 1). Received: rate={self.rate}"
            )

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        return cls(name=name, rate=read_float("rate", args.get("rate", 0.5)))

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        return cls(name=name, rate=read_float("rate", cfg.get("rate", 0.5)))

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().dropout(xs[0], self.rate, training=ctx.train_dropout, rng=ctx.rng)

    has_backward: ClassVar[bool] = True

    def forward_train(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray],
                      ctx: Context) -> tuple[np.ndarray, Any]:
        import numpy as np

        if self.rate == 0.0 or ctx.rng is None:
            return xs[0], None
        mask = grads().dropout_mask(xs[0].shape, self.rate, ctx.rng)
        scale = np.float64 if xs[0].dtype == np.float64 else np.float32
        return xs[0] * mask * scale(1.0 / (1.0 - self.rate)), mask

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        if saved is None:
            return Gradients([grad], {})
        return Gradients([grads().dropout_backward(grad, saved, self.rate)], {})


@register
@dataclass(frozen=True, kw_only=True)
class Identity(Layer):
    """Passes its input on (Keras ``Identity``; ``StochasticDepth`` is one at inference)."""

    type: ClassVar[str] = "Identity"
    tokens: ClassVar[tuple[str, ...]] = ("IDENTITY",)
    prefix: ClassVar[str] = "identity"
    keras_classes: ClassVar[tuple[str, ...]] = ("Identity", "StochasticDepth")
    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        return Gradients([grad], {})


_TOKEN_FUNCTIONS = {
    "RELU": "relu", "RELU6": "relu6", "SIGMOID": "sigmoid", "TANH": "tanh", "SOFTMAX": "softmax",
    "ELU": "elu", "LRELU": "leaky_relu", "LEAKYRELU": "leaky_relu", "GELU": "gelu",
    "SILU": "silu", "SWISH": "silu", "HSWISH": "hard_silu", "HSIGMOID": "hard_sigmoid",
}
DEFAULT_ALPHA = {"leaky_relu": 0.3, "elu": 1.0}
"""Keras' layer defaults: ``LeakyReLU(negative_slope=0.3)``, ``ELU(alpha=1.0)``."""


@register
@dataclass(frozen=True, kw_only=True)
class Activation(Layer):
    """An element-wise activation (softmax: over the last axis); ``alpha`` for leaky_relu and
    elu. ``ACT(name)`` takes any Keras 3 activation name."""

    function: str = "relu"
    alpha: float | None = None
    type: ClassVar[str] = "Activation"
    tokens: ClassVar[tuple[str, ...]] = ("ACT", "ACTIVATION", *_TOKEN_FUNCTIONS)
    prefix: ClassVar[str] = "act"
    positional: ClassVar[tuple[str, ...]] = ("alpha",)
    keywords: ClassVar[tuple[str, ...]] = ("max_value", "threshold", "function")
    keras_classes: ClassVar[tuple[str, ...]] = ("Activation", "LeakyReLU", "ELU", "Softmax")

    def __post_init__(self) -> None:
        if self.function not in ACTIVATIONS:
            raise ModelError(
                f"layer '{self.name}': unknown value for `function`. Allowed values are: "
                f"{', '.join(ACTIVATIONS)}. Received: function={self.function}"
            )
        if self.alpha is None and self.function in DEFAULT_ALPHA:
            object.__setattr__(self, "alpha", DEFAULT_ALPHA[self.function])

    @classmethod
    def prefix_for(cls, token: str) -> str:
        return {"LEAKYRELU": "lrelu", "ACTIVATION": "act"}.get(token, token.lower())

    @classmethod
    def positional_for(cls, token: str) -> tuple[str, ...]:
        return ("function",) if token in ("ACT", "ACTIVATION") else cls.positional

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        if token in ("ACT", "ACTIVATION"):
            function = read_activation(args.get("function", "linear"), "function")
            return cls(name=name, function=function or "linear")
        function = _TOKEN_FUNCTIONS[token]
        if function == "relu" and (set(args) & {"max_value", "threshold"} or "alpha" in args):
            return ReLU(name=name, max_value=read_float("max_value", args["max_value"]) if "max_value" in args else None,
                        negative_slope=read_float("alpha", args.get("alpha", 0.0)),
                        threshold=read_float("threshold", args.get("threshold", 0.0)))
        if set(args) - {"alpha"}:
            raise ModelError(f"{token} takes no parameter {', '.join(sorted(set(args) - {'alpha'}))}")
        alpha = read_float("alpha", args["alpha"]) if "alpha" in args else None
        return cls(name=name, function=function, alpha=alpha)

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        if keras_class == "LeakyReLU":
            return cls(name=name, function="leaky_relu",
                       alpha=read_float("negative_slope", cfg.get("negative_slope", cfg.get("alpha", 0.3))))
        if keras_class == "ELU":
            return cls(name=name, function="elu", alpha=read_float("alpha", cfg.get("alpha", 1.0)))
        if keras_class == "Softmax":
            if cfg.get("axis", -1) not in (-1, [-1]):
                raise Unsupported(f"Softmax over axis={cfg.get('axis')} (only the last axis, -1)")
            return cls(name=name, function="softmax")
        function = read_activation(cfg.get("activation")) or "linear"
        # the activation *function* leaky_relu defaults to a slope of 0.2 (the LeakyReLU layer: 0.3)
        return cls(name=name, function=function, alpha=fused_alpha(function))

    def output_shape(self, *input_shapes: Shape) -> Shape:
        shape = input_shapes[0]
        if self.function == "glu":
            if shape[-1] % 2:
                raise ShapeError(f"layer '{self.name}' (glu) needs an even last axis. Received: {shape_text(shape)}")
            return (*shape[:-1], shape[-1] // 2)
        return tuple(shape)

    @property
    def activation_name(self) -> str | None:
        return None if self.function == "linear" else self.function

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().activate(xs[0], self.function, self.alpha, inplace=ctx.inplace)

    has_backward: ClassVar[bool] = True

    def forward_train(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray],
                      ctx: Context) -> tuple[np.ndarray, Any]:
        return ops().activate(xs[0], self.function, self.alpha), None

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        return Gradients([activation_grad(self.function, self.alpha, xs[0], grad)], {})


@register
@dataclass(frozen=True, kw_only=True)
class ReLU(Layer):
    """Keras' ``ReLU`` layer: ``max_value`` caps (ReLU6), ``negative_slope`` leaks below
    ``threshold``."""

    max_value: float | None = None
    negative_slope: float = 0.0
    threshold: float = 0.0
    type: ClassVar[str] = "ReLU"
    keras_classes: ClassVar[tuple[str, ...]] = ("ReLU",)
    prefix: ClassVar[str] = "relu"

    def __post_init__(self) -> None:
        if self.max_value is not None and self.max_value < 0:
            raise ModelError(f"layer '{self.name}': `max_value` must be >= 0. Received: max_value={self.max_value}")
        if self.negative_slope < 0:
            raise ModelError(
                f"layer '{self.name}': `negative_slope` must be >= 0. Received: negative_slope={self.negative_slope}"
            )

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        max_value = cfg.get("max_value")
        if max_value is None and not cfg.get("negative_slope") and not cfg.get("threshold"):
            return Activation(name=name, function="relu")  # plain: fused into the layer before it
        return cls(name=name, max_value=None if max_value is None else read_float("max_value", max_value),
                   negative_slope=read_float("negative_slope", cfg.get("negative_slope") or 0.0),
                   threshold=read_float("threshold", cfg.get("threshold") or 0.0))

    @property
    def activation_name(self) -> str | None:
        return "relu" if (self.max_value, self.negative_slope, self.threshold) == (None, 0.0, 0.0) else "relu*"

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().relu(xs[0], max_value=self.max_value, negative_slope=self.negative_slope,
                          threshold=self.threshold)

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        return Gradients([grads().relu_layer_backward(xs[0], grad, max_value=self.max_value,
                                                      negative_slope=self.negative_slope,
                                                      threshold=self.threshold)], {})


def _floats(key: str, value: Any) -> float | tuple[float, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(read_float(key, v) for v in value)
    return read_float(key, value)


@register
@dataclass(frozen=True, kw_only=True)
class Rescaling(Layer):
    """``x * scale + offset`` (Keras ``Rescaling``: pixels 0..255 to 0..1 or -1..1)."""

    scale: float | tuple[float, ...] = 1.0
    offset: float | tuple[float, ...] = 0.0
    type: ClassVar[str] = "Rescaling"
    tokens: ClassVar[tuple[str, ...]] = ("RESCALE", "RESCALING")
    prefix: ClassVar[str] = "rescale"
    positional: ClassVar[tuple[str, ...]] = ("scale", "offset")
    required: ClassVar[int] = 1
    keras_classes: ClassVar[tuple[str, ...]] = ("Rescaling",)

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        return cls(name=name, scale=_floats("scale", args["scale"]), offset=_floats("offset", args.get("offset", 0.0)))

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        return cls(name=name, scale=_floats("scale", cfg.get("scale", 1.0)),
                   offset=_floats("offset", cfg.get("offset", 0.0)))

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().rescaling(xs[0], self.scale, self.offset)

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        import numpy as np

        return Gradients([grads().rescaling_backward(grad, np.asarray(self.scale, grad.dtype))], {})


@register
@dataclass(frozen=True, kw_only=True)
class Normalization(Layer):
    """``(x - mean) / sqrt(variance)`` per channel (Keras ``Normalization``). The mean and
    variance are the config's constants, or (when the config leaves them out) weights
    ``mean``, ``variance`` and ``count`` as Keras stores them."""

    mean: tuple[float, ...] | None = None
    variance: tuple[float, ...] | None = None
    invert: bool = False
    type: ClassVar[str] = "Normalization"
    keras_classes: ClassVar[tuple[str, ...]] = ("Normalization",)
    prefix: ClassVar[str] = "normalization"

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.variance is None):
            raise ModelError(f"layer '{self.name}': give both `mean` and `variance`, or neither")

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        axis = cfg.get("axis", -1)
        if axis not in (-1, [-1], 3, [3]):
            raise Unsupported(f"Normalization over axis={axis} (only the channels axis, -1)")
        mean, variance = cfg.get("mean"), cfg.get("variance")

        def constants(key: str, value: Any) -> tuple[float, ...] | None:
            if value is None:
                return None
            floats = _floats(key, value)
            return floats if isinstance(floats, tuple) else (floats,)

        return cls(name=name, mean=constants("mean", mean), variance=constants("variance", variance),
                   invert=read_bool("invert", cfg.get("invert", False)))

    def param_shapes(self, *input_shapes: Shape) -> dict[str, Shape]:
        if self.mean is not None:
            return {}
        d = input_shapes[0][-1]
        return {"mean": (d,), "variance": (d,), "count": ()}

    def trainable_params(self, *input_shapes: Shape) -> int:
        return 0

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        mean = weights["mean"] if self.mean is None else self.mean
        variance = weights["variance"] if self.variance is None else self.variance
        return ops().normalization(xs[0], mean, variance, invert=self.invert)

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        # The mean and variance are statistics of the data (Keras' adapt), not trained.
        variance = weights["variance"] if self.variance is None else self.variance
        return Gradients([grads().normalization_backward(grad, variance, invert=self.invert)], {})

    def frozen_params(self) -> tuple[str, ...]:
        return ("mean", "variance", "count") if self.mean is None else ()


@register
@dataclass(frozen=True, kw_only=True)
class LayerScale(Layer):
    """ConvNeXt's per-channel scale: ``x * gamma``, gamma starting at ``init_values``."""

    init_values: float = 1e-6
    type: ClassVar[str] = "LayerScale"
    tokens: ClassVar[tuple[str, ...]] = ("LAYERSCALE",)
    prefix: ClassVar[str] = "layerscale"
    positional: ClassVar[tuple[str, ...]] = ("init_values",)
    keras_classes: ClassVar[tuple[str, ...]] = ("LayerScale",)

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        return cls(name=name, init_values=read_float("init_values", args.get("init_values", 1e-6)))

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        return cls(name=name, init_values=read_float("init_values", cfg.get("init_values", 1e-6)))

    def param_shapes(self, *input_shapes: Shape) -> dict[str, Shape]:
        return {"gamma": (input_shapes[0][-1],)}

    def init_value(self, param: str) -> float | None:
        return self.init_values

    def macs(self, *input_shapes: Shape) -> int:
        return math.prod(input_shapes[0])

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return xs[0] * weights["gamma"]

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        dx, dgamma = grads().layer_scale_backward(xs[0], weights["gamma"], grad)
        return Gradients([dx], {"gamma": dgamma})
