"""The layer objects every model spelling parses into (pure Python, no numpy).

Each layer is a frozen dataclass that knows, for a given input shape (batch excluded,
channels-last: ``(H, W, D)`` or ``(units,)``), its output shape, its parameter arrays in
Keras layouts, its parameter count (shared and, for conv layers, unshared) and its
multiply-accumulates. The arithmetic itself lives in :mod:`convcli.geometry`.

>>> conv = Conv2D(name="conv1", filters=96, kernel_size=(11, 11), strides=(4, 4))
>>> conv.output_shape((227, 227, 3))
(55, 55, 96)
>>> conv.params((227, 227, 3)), conv.params_unshared((227, 227, 3))
(34944, 105705600)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

from convcli import geometry
from convcli.errors import ModelError, ShapeError

Shape = tuple[int, ...]
PaddingSpec = Literal["valid", "same"] | tuple[int, int, int, int]

ACTIVATIONS = ("relu", "sigmoid", "tanh", "elu", "softmax", "leaky_relu")
"""Activation functions a layer may carry (``Activation.function``, fused ``activation=``)."""


class Window(NamedTuple):
    """How a sliding-window layer looks at its input, per axis (height, width)."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    pad_before: tuple[int, int]


def _shape_text(shape: Shape) -> str:
    return "x".join(str(n) for n in shape)


def _spatial(layer: Layer, input_shape: Shape) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ShapeError(
            f"layer '{layer.name}' ({layer.type}) needs a 3-D input (height, width, depth). "
            f"Received: input shape {_shape_text(input_shape)}"
        )
    h, w, d = input_shape
    return h, w, d


def _check_activation(name: str, activation: str | None) -> None:
    if activation is not None and activation not in ACTIVATIONS:
        raise ModelError(
            f"layer '{name}': unknown value for `activation`. Allowed values are: "
            f"{', '.join(ACTIVATIONS)}. Received: activation={activation}"
        )


def _window_length(
    layer: Layer, axis: str, n: int, kernel: int, stride: int, padding: geometry.Padding, dilation: int = 1
) -> int:
    try:
        return geometry.conv_output_length(n, kernel, stride, padding, dilation)
    except ShapeError as exc:
        raise ShapeError(f"layer '{layer.name}' ({layer.type}), {axis}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class Layer:
    """Base class: a named layer. ``type`` is the Keras class name shown in summaries."""

    name: str
    type: ClassVar[str] = "Layer"
    spatial: ClassVar[Literal["window", "pointwise", "global"]] = "pointwise"
    """How the receptive field changes: a sliding ``window``, unchanged (``pointwise``),
    or every output sees the whole input (``global``)."""

    def output_shape(self, input_shape: Shape) -> Shape:
        """Output shape for ``input_shape`` (batch excluded); ShapeError if it does not fit."""
        return tuple(input_shape)

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        """Parameter arrays in Keras layouts, e.g. ``{"kernel": (F, F, D, K), "bias": (K,)}``."""
        return {}

    def params(self, input_shape: Shape) -> int:
        """Number of parameters (weights shared as the layer shares them)."""
        return sum(math.prod(shape) for shape in self.param_shapes(input_shape).values())

    def params_unshared(self, input_shape: Shape) -> int | None:
        """Parameters if every output neuron had its own weights (conv layers only), else None."""
        return None

    def macs(self, input_shape: Shape) -> int:
        """Multiply-accumulates of the weights for one input (activations, pooling: 0)."""
        return 0

    def window(self, input_shape: Shape) -> Window | None:
        """The sliding window (for receptive-field arithmetic), None when ``spatial`` is not window."""
        return None


@dataclass(frozen=True, kw_only=True)
class Conv2D(Layer):
    """A CONV layer with shared weights (Keras ``Conv2D``)."""

    filters: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: PaddingSpec = "valid"
    dilation: tuple[int, int] = (1, 1)
    use_bias: bool = True
    activation: str | None = None
    type: ClassVar[str] = "Conv2D"
    spatial: ClassVar[Literal["window", "pointwise", "global"]] = "window"

    def __post_init__(self) -> None:
        _check_positive(self.name, filters=self.filters, kernel_size=self.kernel_size,
                        strides=self.strides, dilation=self.dilation)
        _check_padding(self.name, self.padding)
        _check_activation(self.name, self.activation)

    def _axis_padding(self, axis: int) -> geometry.Padding:
        if isinstance(self.padding, tuple):
            return (self.padding[2 * axis], self.padding[2 * axis + 1])
        return self.padding

    def padding_amounts(self, input_shape: Shape) -> tuple[int, int, int, int]:
        """Padding (top, bottom, left, right) resolved for ``input_shape`` (Keras same:
        the extra row/column at the bottom/right)."""
        h, w, _ = _spatial(self, input_shape)
        top, bottom = geometry.padding_amounts(h, self.kernel_size[0], self.strides[0],
                                               self._axis_padding(0), self.dilation[0])
        left, right = geometry.padding_amounts(w, self.kernel_size[1], self.strides[1],
                                               self._axis_padding(1), self.dilation[1])
        return top, bottom, left, right

    def output_shape(self, input_shape: Shape) -> Shape:
        h, w, _ = _spatial(self, input_shape)
        out_h = _window_length(self, "height", h, self.kernel_size[0], self.strides[0],
                               self._axis_padding(0), self.dilation[0])
        out_w = _window_length(self, "width", w, self.kernel_size[1], self.strides[1],
                               self._axis_padding(1), self.dilation[1])
        return out_h, out_w, self.filters

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        _, _, d = _spatial(self, input_shape)
        shapes: dict[str, Shape] = {"kernel": (*self.kernel_size, d, self.filters)}
        if self.use_bias:
            shapes["bias"] = (self.filters,)
        return shapes

    def params_unshared(self, input_shape: Shape) -> int | None:
        out_h, out_w, _ = self.output_shape(input_shape)
        return geometry.local_params(out_h, out_w, *self.kernel_size, input_shape[2],
                                     self.filters, self.use_bias)

    def macs(self, input_shape: Shape) -> int:
        out = self.output_shape(input_shape)
        return math.prod(out) * self.kernel_size[0] * self.kernel_size[1] * input_shape[2]

    def window(self, input_shape: Shape) -> Window | None:
        top, _, left, _ = self.padding_amounts(input_shape)
        return Window(self.kernel_size, self.strides, self.dilation, (top, left))


@dataclass(frozen=True, kw_only=True)
class LocallyConnected2D(Layer):
    """A locally connected layer: a conv layer whose weights are not shared (valid padding)."""

    filters: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    use_bias: bool = True
    activation: str | None = None
    type: ClassVar[str] = "LocallyConnected2D"
    spatial: ClassVar[Literal["window", "pointwise", "global"]] = "window"

    def __post_init__(self) -> None:
        _check_positive(self.name, filters=self.filters, kernel_size=self.kernel_size,
                        strides=self.strides)
        _check_activation(self.name, self.activation)

    def output_shape(self, input_shape: Shape) -> Shape:
        h, w, _ = _spatial(self, input_shape)
        out_h = _window_length(self, "height", h, self.kernel_size[0], self.strides[0], 0)
        out_w = _window_length(self, "width", w, self.kernel_size[1], self.strides[1], 0)
        return out_h, out_w, self.filters

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        out_h, out_w, _ = self.output_shape(input_shape)
        d = input_shape[2]
        shapes: dict[str, Shape] = {
            "kernel": (out_h * out_w, self.kernel_size[0] * self.kernel_size[1] * d, self.filters)
        }
        if self.use_bias:
            shapes["bias"] = (out_h, out_w, self.filters)
        return shapes

    def params_unshared(self, input_shape: Shape) -> int | None:
        return self.params(input_shape)

    def macs(self, input_shape: Shape) -> int:
        out = self.output_shape(input_shape)
        return math.prod(out) * self.kernel_size[0] * self.kernel_size[1] * input_shape[2]

    def window(self, input_shape: Shape) -> Window | None:
        return Window(self.kernel_size, self.strides, (1, 1), (0, 0))


@dataclass(frozen=True, kw_only=True)
class _Pooling2D(Layer):
    pool_size: tuple[int, int] = (2, 2)
    strides: tuple[int, int] | None = None
    """None means the pool size, as in Keras."""
    padding: Literal["valid", "same"] = "valid"
    spatial: ClassVar[Literal["window", "pointwise", "global"]] = "window"

    def __post_init__(self) -> None:
        if self.strides is None:
            object.__setattr__(self, "strides", self.pool_size)
        _check_positive(self.name, pool_size=self.pool_size, strides=self.strides)
        if self.padding not in ("valid", "same"):
            raise ModelError(
                f"layer '{self.name}': unknown value for `padding`. Allowed values are: valid, same. "
                f"Received: padding={self.padding!r}"
            )

    @property
    def _strides(self) -> tuple[int, int]:
        return self.strides if self.strides is not None else self.pool_size

    def output_shape(self, input_shape: Shape) -> Shape:
        h, w, d = _spatial(self, input_shape)
        out_h = _window_length(self, "height", h, self.pool_size[0], self._strides[0], self.padding)
        out_w = _window_length(self, "width", w, self.pool_size[1], self._strides[1], self.padding)
        return out_h, out_w, d

    def padding_amounts(self, input_shape: Shape) -> tuple[int, int, int, int]:
        """Padding (top, bottom, left, right) resolved for ``input_shape``."""
        h, w, _ = _spatial(self, input_shape)
        top, bottom = geometry.padding_amounts(h, self.pool_size[0], self._strides[0], self.padding)
        left, right = geometry.padding_amounts(w, self.pool_size[1], self._strides[1], self.padding)
        return top, bottom, left, right

    def window(self, input_shape: Shape) -> Window | None:
        top, _, left, _ = self.padding_amounts(input_shape)
        return Window(self.pool_size, self._strides, (1, 1), (top, left))


@dataclass(frozen=True, kw_only=True)
class MaxPooling2D(_Pooling2D):
    """Max pooling (the lecture's POOL); strides default to the pool size."""

    type: ClassVar[str] = "MaxPooling2D"


@dataclass(frozen=True, kw_only=True)
class AveragePooling2D(_Pooling2D):
    """Average pooling; strides default to the pool size."""

    type: ClassVar[str] = "AveragePooling2D"


@dataclass(frozen=True, kw_only=True)
class GlobalAveragePooling2D(Layer):
    """Average over height and width: (H, W, D) -> (D,)."""

    type: ClassVar[str] = "GlobalAveragePooling2D"
    spatial: ClassVar[Literal["window", "pointwise", "global"]] = "global"

    def output_shape(self, input_shape: Shape) -> Shape:
        return (_spatial(self, input_shape)[2],)


@dataclass(frozen=True, kw_only=True)
class GlobalMaxPooling2D(GlobalAveragePooling2D):
    """Maximum over height and width: (H, W, D) -> (D,)."""

    type: ClassVar[str] = "GlobalMaxPooling2D"


@dataclass(frozen=True, kw_only=True)
class ZeroPadding2D(Layer):
    """Zero rows and columns around the input: ``padding`` is (top, bottom, left, right)."""

    padding: tuple[int, int, int, int] = (1, 1, 1, 1)
    type: ClassVar[str] = "ZeroPadding2D"
    spatial: ClassVar[Literal["window", "pointwise", "global"]] = "window"

    def __post_init__(self) -> None:
        _check_padding(self.name, self.padding)

    def output_shape(self, input_shape: Shape) -> Shape:
        h, w, d = _spatial(self, input_shape)
        top, bottom, left, right = self.padding
        return h + top + bottom, w + left + right, d

    def window(self, input_shape: Shape) -> Window | None:
        return Window((1, 1), (1, 1), (1, 1), (self.padding[0], self.padding[2]))


@dataclass(frozen=True, kw_only=True)
class Flatten(Layer):
    """(H, W, D) -> (H*W*D,) in channels-last order."""

    type: ClassVar[str] = "Flatten"
    spatial: ClassVar[Literal["window", "pointwise", "global"]] = "global"

    def output_shape(self, input_shape: Shape) -> Shape:
        return (math.prod(input_shape),)


@dataclass(frozen=True, kw_only=True)
class Dense(Layer):
    """A fully connected layer (the lecture's FC) on a flat input."""

    units: int
    use_bias: bool = True
    activation: str | None = None
    type: ClassVar[str] = "Dense"
    spatial: ClassVar[Literal["window", "pointwise", "global"]] = "global"

    def __post_init__(self) -> None:
        _check_positive(self.name, units=self.units)
        _check_activation(self.name, self.activation)

    def _inputs(self, input_shape: Shape) -> int:
        if len(input_shape) != 1:
            raise ShapeError(
                f"layer '{self.name}' (Dense) needs a flat input; add a Flatten layer before it. "
                f"Received: input shape {_shape_text(input_shape)}"
            )
        return input_shape[0]

    def output_shape(self, input_shape: Shape) -> Shape:
        self._inputs(input_shape)
        return (self.units,)

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        shapes: dict[str, Shape] = {"kernel": (self._inputs(input_shape), self.units)}
        if self.use_bias:
            shapes["bias"] = (self.units,)
        return shapes

    def macs(self, input_shape: Shape) -> int:
        return self._inputs(input_shape) * self.units


@dataclass(frozen=True, kw_only=True)
class Dropout(Layer):
    """Dropout with probability ``rate`` (the identity at inference)."""

    rate: float = 0.5
    type: ClassVar[str] = "Dropout"

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ModelError(
                f"layer '{self.name}': `rate` must be in [0, 1). Received: rate={self.rate}"
            )


@dataclass(frozen=True, kw_only=True)
class BatchNormalization(Layer):
    """Batch normalisation over the last axis: gamma, beta, moving mean and variance."""

    epsilon: float = 1e-3
    type: ClassVar[str] = "BatchNormalization"

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        d = input_shape[-1]
        return {"gamma": (d,), "beta": (d,), "moving_mean": (d,), "moving_variance": (d,)}


@dataclass(frozen=True, kw_only=True)
class Activation(Layer):
    """An element-wise activation (softmax: over the last axis); ``alpha`` for leaky_relu and elu."""

    function: str = "relu"
    alpha: float | None = None
    type: ClassVar[str] = "Activation"

    def __post_init__(self) -> None:
        if self.function not in ACTIVATIONS:
            raise ModelError(
                f"layer '{self.name}': unknown value for `function`. Allowed values are: "
                f"{', '.join(ACTIVATIONS)}. Received: function={self.function}"
            )
        if self.alpha is None and self.function in DEFAULT_ALPHA:
            object.__setattr__(self, "alpha", DEFAULT_ALPHA[self.function])


DEFAULT_ALPHA = {"leaky_relu": 0.3, "elu": 1.0}
"""Keras' defaults: ``LeakyReLU(negative_slope=0.3)``, ``ELU(alpha=1.0)``."""


def output_activation(layer: Layer) -> str | None:
    """The activation applied to the layer's output: an Activation layer's function or the
    fused ``activation=`` of a Conv2D, LocallyConnected2D or Dense layer (None otherwise)."""
    if isinstance(layer, Activation):
        return layer.function
    return getattr(layer, "activation", None)


def _check_positive(name: str, **values: int | tuple[int, ...]) -> None:
    for key, value in values.items():
        items = value if isinstance(value, tuple) else (value,)
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in items):
            raise ModelError(
                f"layer '{name}': `{key}` must be a positive integer. Received: {key}={value!r}"
            )


def _check_padding(name: str, padding: object) -> None:
    if padding in ("valid", "same"):
        return
    if (
        isinstance(padding, tuple)
        and len(padding) == 4
        and all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in padding)
    ):
        return
    raise ModelError(
        f"layer '{name}': unknown value for `padding`. Allowed values are: valid, same, a "
        f"non-negative integer, (top, bottom, left, right). Received: padding={padding!r}"
    )


@dataclass(frozen=True)
class Model:
    """A sequential model: an input shape (batch excluded) and its layers in order."""

    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    name: str = "model"
    class_names: tuple[str, ...] | None = field(default=None)
    weights_path: Path | None = None
    """Weights named by the model file (TOML ``weights = "x.npz"``), absolute; not checked here."""

    def __post_init__(self) -> None:
        if not self.input_shape or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in self.input_shape
        ) or len(self.input_shape) not in (1, 3):
            raise ModelError(
                "the input shape must be (height, width, depth) or (units,) of positive integers. "
                f"Received: {self.input_shape!r}"
            )
        seen: set[str] = set()
        for layer in self.layers:
            if layer.name in seen:
                raise ModelError(f"two layers are named '{layer.name}'; layer names must be unique")
            seen.add(layer.name)

    def shapes(self) -> list[tuple[Layer, Shape, Shape]]:
        """Each layer with its input and output shape; ShapeError at the first that does not fit."""
        rows: list[tuple[Layer, Shape, Shape]] = []
        shape: Shape = tuple(self.input_shape)
        for layer in self.layers:
            out = layer.output_shape(shape)
            rows.append((layer, shape, out))
            shape = out
        return rows

    def output_shape(self) -> Shape:
        """Shape of the model's output (batch excluded)."""
        rows = self.shapes()
        return rows[-1][2] if rows else tuple(self.input_shape)

    def param_shapes(self) -> dict[str, Shape]:
        """Every parameter array as ``"<layer>.<param>"`` -> shape (the weights-file keys)."""
        return {
            f"{layer.name}.{key}": shape
            for layer, in_shape, _ in self.shapes()
            for key, shape in layer.param_shapes(in_shape).items()
        }

    def count_params(self) -> int:
        """Total number of parameters, as Keras' ``count_params``."""
        return sum(layer.params(in_shape) for layer, in_shape, _ in self.shapes())
