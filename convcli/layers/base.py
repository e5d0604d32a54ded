"""The layer base class, the registry of layer types, and the value readers they share.

A layer type is one class: it declares its spellings (arrow-notation tokens, which are
also the TOML ``type`` names, and the Keras classes it reads), its arithmetic (output
shape, parameter shapes in Keras' variable order, multiply-accumulates, receptive-field
window) and its forward computation. :data:`REGISTRY` maps every spelling to its class;
the three parsers, the summary and the forward pass look layers up there instead of
switching on types. This module is pure Python: numpy is imported only when a layer's
:meth:`Layer.forward` runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, TypeVar

from convcli import geometry
from convcli.errors import ModelError, ShapeError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

Shape = tuple[int, ...]
PaddingSpec = Literal["valid", "same"] | tuple[int, int, int, int]
Spatial = Literal["window", "pointwise", "global"]

ACTIVATIONS = (
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "glu", "sigmoid",
    "hard_sigmoid", "log_sigmoid", "sparse_sigmoid", "tanh", "hard_tanh", "tanh_shrink",
    "hard_shrink", "soft_shrink", "softmax", "log_softmax", "sparsemax", "silu", "swish",
    "hard_silu", "hard_swish", "mish", "softplus", "softsign", "sparse_plus", "squareplus",
    "exponential", "threshold",
)
"""Every activation name of Keras 3 (``keras.activations``), usable as a layer or fused."""

_ACTIVATION_ALIASES = {"lrelu": "leaky_relu", "leakyrelu": "leaky_relu", "none": "linear"}


class Window(NamedTuple):
    """How a sliding-window layer looks at its input, per axis (height, width)."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    pad_before: tuple[int, int]


class Unsupported(ModelError):
    """A Keras layer class or option convcli does not compute (collected, then reported at once)."""


@dataclass(frozen=True)
class Context:
    """What a forward computation may need besides its inputs and weights."""

    train_dropout: bool = False
    rng: Any = None
    activation: str | None = None
    """An activation fused into this layer's output (a following Activation layer)."""
    alpha: float | None = None
    inplace: bool = False
    """The input array is not needed after this layer: an element-wise layer may overwrite it."""
    observe: Any = None
    """A :class:`convcli.ops.BlockObserver` shown each output block of a fusable layer (conv,
    dense, locally connected) before and after its activation, while the block is in cache."""


def shape_text(shape: Shape) -> str:
    """``(55, 55, 96)`` as ``55x55x96``."""
    return "x".join(str(n) for n in shape)


# --------------------------------------------------------------------------------------
# Reading parameter values written by users (arrow notation, TOML) or by Keras
# --------------------------------------------------------------------------------------

Value = Any


def _show(value: object) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def is_int(value: object) -> bool:
    """True for a Python int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def read_int(key: str, value: Value, minimum: int | None = 1) -> int:
    """An integer parameter (``minimum`` None: any integer)."""
    if is_int(value) and (minimum is None or value >= minimum):
        return int(value)
    need = "an integer" if minimum is None else ("a positive integer" if minimum == 1 else f"an integer >= {minimum}")
    raise ModelError(f"`{key}` must be {need}. Received: {key}={_show(value)}")


def read_pair(key: str, value: Value, minimum: int = 1) -> tuple[int, int]:
    """An integer or a pair of integers (height, width)."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(is_int(v) and v >= minimum for v in value):
        return int(value[0]), int(value[1])
    if is_int(value) and value >= minimum:
        return int(value), int(value)
    raise ModelError(
        f"`{key}` must be a positive integer or a pair of them. Received: {key}={_show(value)}"
    )


def read_float(key: str, value: Value) -> float:
    """A finite number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ModelError(f"`{key}` must be a number. Received: {key}={_show(value)}")


def read_bool(key: str, value: Value) -> bool:
    """true or false."""
    if isinstance(value, bool):
        return value
    raise ModelError(f"`{key}` must be true or false. Received: {key}={_show(value)}")


def read_activation(value: Value, key: str = "activation") -> str | None:
    """An activation name (None and ``linear`` give None: no activation)."""
    if value is None:
        return None
    if isinstance(value, dict):  # Keras 3 may serialise an activation as an object
        value = (value.get("config") or {}).get("name") or value.get("class_name")
    if not isinstance(value, str):
        raise ModelError(f"`{key}` must be an activation name. Received: {key}={_show(value)}")
    text = _ACTIVATION_ALIASES.get(value.lower(), value.lower())
    if text not in ACTIVATIONS:
        raise ModelError(
            f"unknown value for `{key}`. Allowed values are: {', '.join(ACTIVATIONS)}. "
            f"Received: {key}={value}"
        )
    return None if text == "linear" else text


def read_padding(key: str, value: Value) -> PaddingSpec:
    """``same``, ``valid``, an integer P, [vertical, horizontal] or [top, bottom, left, right]."""
    if isinstance(value, str) and value.lower() in ("same", "valid"):
        return "same" if value.lower() == "same" else "valid"
    if is_int(value) and value >= 0:
        return (value, value, value, value)
    if isinstance(value, (list, tuple)) and all(is_int(v) and v >= 0 for v in value):
        if len(value) == 2:
            return (value[0], value[0], value[1], value[1])
        if len(value) == 4:
            return (value[0], value[1], value[2], value[3])
    raise ModelError(
        f"unknown value for `{key}`. Allowed values are: a non-negative integer, same, valid, "
        f"[vertical, horizontal], [top, bottom, left, right]. Received: {key}={_show(value)}"
    )


def keras_padding(cfg: Mapping[str, Any], default: object = 1) -> tuple[int, int, int, int]:
    """Keras' ZeroPadding2D/Cropping2D amounts: P, (vertical, horizontal) or ((top, bottom), (left, right))."""
    pad = cfg.get("padding", cfg.get("cropping", default))
    if is_int(pad):
        return (pad, pad, pad, pad)
    if isinstance(pad, (list, tuple)) and len(pad) == 2:
        if all(is_int(p) for p in pad):
            return (pad[0], pad[0], pad[1], pad[1])
        if all(isinstance(p, (list, tuple)) and len(p) == 2 and all(is_int(q) for q in p) for p in pad):
            return (pad[0][0], pad[0][1], pad[1][0], pad[1][1])
    raise ModelError(f"cannot read the amounts {pad!r}")


def keras_same_or_valid(cfg: Mapping[str, Any]) -> Literal["same", "valid"]:
    """Keras' ``padding`` of a conv or pooling layer (``causal`` and others refused)."""
    padding = str(cfg.get("padding", "valid")).lower()
    if padding not in ("valid", "same"):
        raise Unsupported(f"padding={padding} (allowed: valid, same)")
    return padding  # type: ignore[return-value]


def check_channels_last(cfg: Mapping[str, Any]) -> None:
    """Refuse channels-first layers (convcli is channels-last)."""
    fmt = cfg.get("data_format")
    if fmt not in (None, "channels_last"):
        raise Unsupported(f"data_format={fmt} (convcli is channels-last)")


def spatial_input(layer: Layer, input_shape: Shape) -> tuple[int, int, int]:
    """``(H, W, D)`` of a 3-D input, ShapeError naming the layer otherwise."""
    if len(input_shape) != 3:
        raise ShapeError(
            f"layer '{layer.name}' ({layer.type}) needs a 3-D input (height, width, depth). "
            f"Received: input shape {shape_text(input_shape)}"
        )
    h, w, d = input_shape
    return h, w, d


def window_length(layer: Layer, axis: str, n: int, kernel: int, stride: int, padding: geometry.Padding,
                  dilation: int = 1, floor: bool = False) -> int:
    """One output length of a window layer; ShapeError naming the layer and the axis."""
    try:
        return geometry.conv_output_length(n, kernel, stride, padding, dilation, floor=floor)
    except ShapeError as exc:
        raise ShapeError(f"layer '{layer.name}' ({layer.type}), {axis}: {exc}") from None


def axis_padding(padding: PaddingSpec, axis: int) -> geometry.Padding:
    """The (before, after) pair of one axis, or ``same``/``valid``."""
    if isinstance(padding, tuple):
        return (padding[2 * axis], padding[2 * axis + 1])
    return padding


# --------------------------------------------------------------------------------------
# The base class and the registry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Layer:
    """A named layer. ``type`` is the Keras class name shown in summaries.

    Shape methods take the input shapes (batch excluded) as positional arguments: one for
    most layers, several for merge layers. ``inputs`` names the layers feeding this one
    (empty: the layer before it, or the model input for the first layer).
    """

    name: str
    inputs: tuple[str, ...] = ()
    shares: str | None = None
    """Another call of layer ``shares`` (a Keras layer used twice): its weights, not new ones."""
    type: ClassVar[str] = "Layer"
    spatial: ClassVar[Spatial] = "pointwise"
    """How the receptive field changes: a sliding ``window``, unchanged (``pointwise``),
    or no longer tracked (``global``: every output sees the whole input, or the layout changed)."""
    arity: ClassVar[int | None] = 1
    """Number of inputs (None: two or more, a merge)."""

    # spellings
    tokens: ClassVar[tuple[str, ...]] = ()
    """Arrow-notation tokens (upper case), also the TOML ``type`` names."""
    prefix: ClassVar[str] = "layer"
    """Automatic names: prefix + counter (``conv1``)."""
    positional: ClassVar[tuple[str, ...]] = ()
    required: ClassVar[int] = 0
    keywords: ClassVar[tuple[str, ...]] = ()
    keras_classes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def prefix_for(cls, token: str) -> str:
        """Automatic name prefix for a layer written as ``token``."""
        return cls.prefix

    @classmethod
    def positional_for(cls, token: str) -> tuple[str, ...]:
        """Positional parameters of ``token`` (canonical names)."""
        return cls.positional

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        """Build from arrow-notation / TOML parameters (canonical names, see ``positional``)."""
        return cls(name=name)

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        """Build from a Keras layer config (raise :class:`Unsupported` for what is not computed)."""
        return cls(name=name)

    # arithmetic
    def spatial_kind(self, *input_shapes: Shape) -> Spatial:
        """How this layer changes the receptive field for these inputs (default: ``spatial``)."""
        return self.spatial

    def output_shape(self, *input_shapes: Shape) -> Shape:
        """Output shape (batch excluded); ShapeError if it does not fit."""
        return tuple(input_shapes[0])

    def param_shapes(self, *input_shapes: Shape) -> dict[str, Shape]:
        """Parameter arrays in Keras' variable order and layouts, e.g. ``{"kernel": (F, F, D, K), "bias": (K,)}``."""
        return {}

    def params(self, *input_shapes: Shape) -> int:
        """Number of parameters (weights shared as the layer shares them)."""
        return sum(math.prod(shape) for shape in self.param_shapes(*input_shapes).values())

    def trainable_params(self, *input_shapes: Shape) -> int:
        """Parameters a training step updates (batch norm's moving statistics are not)."""
        return self.params(*input_shapes)

    def params_unshared(self, *input_shapes: Shape) -> int | None:
        """Parameters if every output neuron had its own weights (conv layers only), else None."""
        return None

    def macs(self, *input_shapes: Shape) -> int:
        """Multiply-accumulates of the weights for one input (activations, pooling: 0)."""
        return 0

    def window(self, *input_shapes: Shape) -> Window | None:
        """The sliding window (for receptive-field arithmetic), None when ``spatial`` is not window."""
        return None

    def unreached(self, *input_shapes: Shape) -> tuple[int, int] | None:
        """Rows and columns the windows never reach (Keras' floored sizes), None when all are read."""
        return None

    @property
    def activation_name(self) -> str | None:
        """The activation applied to the layer's output (None when there is none)."""
        return None

    # initialisation and computation
    def init_value(self, param: str) -> float | None:
        """A constant the parameter starts at (None: the rule for its name)."""
        return None

    def fan_in(self, param: str, shape: Shape) -> int:
        """Inputs feeding one output neuron through ``param`` (He initialisation)."""
        return math.prod(shape[:-1])

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        """This layer's computation on a batch (inputs ``xs``, weights by parameter name)."""
        return xs[0]

    # training
    has_backward: ClassVar[bool] = False
    """True when the layer type has a backward pass (training refuses the others by name)."""

    def forward_train(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray],
                      ctx: Context) -> tuple[np.ndarray, Any]:
        """The training forward: the output and what :meth:`backward` needs besides the
        inputs and the output (default: the inference forward, nothing saved)."""
        return self.forward(weights, xs, ctx), None

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        """Gradients of the loss for each input (None where ``need_input`` is False and the
        layer can skip it) and for each trainable parameter by name, given ``grad``, the
        gradient of the output."""
        raise ModelError(f"layer '{self.name}' ({self.type}) has no backward pass: it cannot be trained yet")

    def train_updates(self, saved: Any) -> dict[str, np.ndarray]:
        """Non-trainable parameters a training step sets (batch norm's moving averages)."""
        return {}

    def frozen_params(self) -> tuple[str, ...]:
        """Parameters the optimizer leaves alone (batch norm's moving statistics)."""
        return ()


L_ = TypeVar("L_", bound=type[Layer])


class Registry:
    """Every layer type by its spellings."""

    def __init__(self) -> None:
        self.types: list[type[Layer]] = []
        self.tokens: dict[str, type[Layer]] = {}
        self.keras: dict[str, type[Layer]] = {}

    def register(self, cls: L_) -> L_:
        """Class decorator: add a layer type under its tokens and Keras class names."""
        self.types.append(cls)
        for token in cls.tokens:
            if token in self.tokens:  # pragma: no cover - a programming error
                raise AssertionError(f"token {token} registered twice")
            self.tokens[token] = cls
        for keras_class in cls.keras_classes:
            if keras_class in self.keras:  # pragma: no cover - a programming error
                raise AssertionError(f"Keras class {keras_class} registered twice")
            self.keras[keras_class] = cls
        return cls


REGISTRY = Registry()
register: Callable[[L_], L_] = REGISTRY.register


class Gradients(NamedTuple):
    """What a layer's backward returns."""

    inputs: list[Any]
    """One gradient per input (None: not computed)."""
    params: dict[str, Any]
    """The gradient of each trainable parameter, by parameter name."""


def grads() -> Any:
    """The backward kernels (imported on first use, as :func:`ops`)."""
    from convcli import grad as module

    return module


def activate_train(z: np.ndarray, name: str | None, alpha: float | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A fused activation in training: (its output, the pre-activation kept for the backward)."""
    if name is None:
        return z, None
    return ops().activate(z, name, alpha), z


def activation_grad(name: str | None, alpha: float | None, z: np.ndarray | None, grad: np.ndarray) -> np.ndarray:
    """The gradient before a fused activation, from the kept pre-activation ``z``."""
    if name is None:
        return grad
    return grads().activation_backward(name, grad, x=z, alpha=alpha)  # type: ignore[no-any-return]


def ops() -> Any:
    """The numeric kernels (imported on first use: summaries never load numpy)."""
    from convcli import ops as module

    return module
