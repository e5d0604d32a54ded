"""Convolution layers: Conv2D (grouped, dilated), DepthwiseConv2D, SeparableConv2D,
Conv2DTranspose and the lecture's locally connected layer (unshared weights)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from convcli import geometry
from convcli.errors import ModelError, ShapeError
from convcli.layers.base import (
    Context,
    Gradients,
    Layer,
    PaddingSpec,
    Shape,
    Spatial,
    Unsupported,
    Value,
    Window,
    activate_train,
    activation_grad,
    axis_padding,
    check_channels_last,
    grads,
    keras_same_or_valid,
    ops,
    read_activation,
    read_bool,
    read_int,
    read_padding,
    read_pair,
    register,
    spatial_input,
    window_length,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

FUSED_LEAKY_RELU_ALPHA = 0.2
"""Negative slope of a fused ``activation="leaky_relu"`` (Keras' ``activations.leaky_relu``
default). A separate LRELU/LeakyReLU layer carries its own alpha (Keras' layer: 0.3)."""


def fused_alpha(activation: str | None) -> float | None:
    """The slope a fused activation uses (leaky_relu's function default), else None."""
    return FUSED_LEAKY_RELU_ALPHA if activation == "leaky_relu" else None


def finishing(layer: Any, ctx: Context) -> dict[str, Any]:
    """The keyword arguments that end a fusable layer's op: the activation fused into it
    (a following Activation layer's, else its own) and the block observer."""
    if ctx.activation is not None:
        return {"activation": ctx.activation, "alpha": ctx.alpha, "observe": ctx.observe}
    return {"activation": layer.activation, "alpha": fused_alpha(layer.activation), "observe": ctx.observe}


@dataclass(frozen=True, kw_only=True)
class _Windowed(Layer):
    """A layer sliding a kernel over height and width (conv layers)."""

    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: PaddingSpec = "valid"
    dilation: tuple[int, int] = (1, 1)
    use_bias: bool = True
    activation: str | None = None
    floor: bool = False
    """Keras' rule: a fractional output size is floored (imported models); else refused."""
    spatial: ClassVar[Spatial] = "window"

    def _check(self, **positive: int | tuple[int, ...]) -> None:
        check_positive(self.name, kernel_size=self.kernel_size, strides=self.strides,
                       dilation=self.dilation, **positive)
        check_padding(self.name, self.padding)
        if self.activation is not None:
            read_activation(self.activation)

    def padding_amounts(self, input_shape: Shape) -> tuple[int, int, int, int]:
        """Padding (top, bottom, left, right) resolved for ``input_shape`` (Keras same:
        the extra row/column at the bottom/right)."""
        h, w, _ = spatial_input(self, input_shape)
        top, bottom = geometry.padding_amounts(h, self.kernel_size[0], self.strides[0],
                                               axis_padding(self.padding, 0), self.dilation[0])
        left, right = geometry.padding_amounts(w, self.kernel_size[1], self.strides[1],
                                               axis_padding(self.padding, 1), self.dilation[1])
        return top, bottom, left, right

    def output_hw(self, input_shape: Shape) -> tuple[int, int]:
        """Output height and width."""
        h, w, _ = spatial_input(self, input_shape)
        return (
            window_length(self, "height", h, self.kernel_size[0], self.strides[0],
                          axis_padding(self.padding, 0), self.dilation[0], self.floor),
            window_length(self, "width", w, self.kernel_size[1], self.strides[1],
                          axis_padding(self.padding, 1), self.dilation[1], self.floor),
        )

    def window(self, *input_shapes: Shape) -> Window | None:
        top, _, left, _ = self.padding_amounts(input_shapes[0])
        return Window(self.kernel_size, self.strides, self.dilation, (top, left))

    def unreached(self, *input_shapes: Shape) -> tuple[int, int] | None:
        h, w, _ = spatial_input(self, input_shapes[0])
        rows = geometry.unreached(h, self.kernel_size[0], self.strides[0], axis_padding(self.padding, 0), self.dilation[0])
        cols = geometry.unreached(w, self.kernel_size[1], self.strides[1], axis_padding(self.padding, 1), self.dilation[1])
        return (rows, cols) if rows or cols else None

    @property
    def activation_name(self) -> str | None:
        return self.activation

    def _geometry(self, x: np.ndarray) -> dict[str, Any]:
        return {"strides": self.strides, "padding": self.padding_amounts(tuple(x.shape[1:])),
                "dilation": self.dilation}


def _keras_common(cfg: Mapping[str, Any]) -> dict[str, Any]:
    check_channels_last(cfg)
    return {
        "kernel_size": read_pair("kernel_size", _tuple(cfg.get("kernel_size"))),
        "strides": read_pair("strides", _tuple(cfg.get("strides", 1))),
        "padding": keras_same_or_valid(cfg),
        "dilation": read_pair("dilation_rate", _tuple(cfg.get("dilation_rate", 1))),
        "use_bias": read_bool("use_bias", cfg.get("use_bias", True)),
        "activation": read_activation(cfg.get("activation")),
        "floor": True,
    }


def _user_common(args: dict[str, Value]) -> dict[str, Any]:
    return {
        "kernel_size": read_pair("kernel", args["kernel"]),
        "strides": read_pair("stride", args.get("stride", 1)),
        "padding": read_padding("pad", args.get("pad", 0)),
        "dilation": read_pair("dilation", args.get("dilation", 1)),
        "use_bias": read_bool("bias", args.get("bias", True)),
        "activation": read_activation(args.get("activation")),
    }


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


_CONV_KW = ("stride", "pad", "dilation", "activation", "bias")


@register
@dataclass(frozen=True, kw_only=True)
class Conv2D(_Windowed):
    """A CONV layer with shared weights (Keras ``Conv2D``); ``groups`` splits the channels
    into independent convolutions (ResNeXt, ConvNeXt's depthwise 7x7)."""

    filters: int
    groups: int = 1
    type: ClassVar[str] = "Conv2D"
    tokens: ClassVar[tuple[str, ...]] = ("CONV",)
    prefix: ClassVar[str] = "conv"
    positional: ClassVar[tuple[str, ...]] = ("filters", "kernel")
    required: ClassVar[int] = 2
    keywords: ClassVar[tuple[str, ...]] = (*_CONV_KW, "groups")
    keras_classes: ClassVar[tuple[str, ...]] = ("Conv2D", "Convolution2D")

    def __post_init__(self) -> None:
        self._check(filters=self.filters, groups=self.groups)
        if self.filters % self.groups:
            raise ModelError(
                f"layer '{self.name}': `filters` ({self.filters}) must be divisible by `groups` ({self.groups})"
            )

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        return cls(name=name, filters=read_int("filters", args["filters"]),
                   groups=read_int("groups", args.get("groups", 1)), **_user_common(args))

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        return cls(name=name, filters=read_int("filters", cfg.get("filters")),
                   groups=read_int("groups", cfg.get("groups", 1)), **_keras_common(cfg))

    def _depth(self, input_shape: Shape) -> int:
        _, _, d = spatial_input(self, input_shape)
        if d % self.groups:
            raise ShapeError(
                f"layer '{self.name}' (Conv2D): the input depth {d} is not divisible by groups={self.groups}"
            )
        return d // self.groups

    def output_shape(self, *input_shapes: Shape) -> Shape:
        self._depth(input_shapes[0])
        return (*self.output_hw(input_shapes[0]), self.filters)

    def param_shapes(self, *input_shapes: Shape) -> dict[str, Shape]:
        shapes: dict[str, Shape] = {"kernel": (*self.kernel_size, self._depth(input_shapes[0]), self.filters)}
        if self.use_bias:
            shapes["bias"] = (self.filters,)
        return shapes

    def params_unshared(self, *input_shapes: Shape) -> int | None:
        out_h, out_w = self.output_hw(input_shapes[0])
        return geometry.local_params(out_h, out_w, *self.kernel_size, self._depth(input_shapes[0]),
                                     self.filters, self.use_bias)

    def macs(self, *input_shapes: Shape) -> int:
        out_h, out_w = self.output_hw(input_shapes[0])
        return out_h * out_w * self.filters * math.prod(self.kernel_size) * self._depth(input_shapes[0])

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        kwargs: dict[str, Any] = {"groups": self.groups} if self.groups != 1 else {}
        return ops().conv2d(xs[0], weights["kernel"], weights.get("bias"), **self._geometry(xs[0]),
                            **finishing(self, ctx), **kwargs)

    has_backward: ClassVar[bool] = True

    def forward_train(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray],
                      ctx: Context) -> tuple[np.ndarray, Any]:
        kwargs: dict[str, Any] = {"groups": self.groups} if self.groups != 1 else {}
        z = ops().conv2d(xs[0], weights["kernel"], weights.get("bias"), **self._geometry(xs[0]), **kwargs)
        return activate_train(z, self.activation, fused_alpha(self.activation))

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        g = activation_grad(self.activation, fused_alpha(self.activation), saved, grad)
        if self.groups != 1:
            dx, dkernel, dbias = grads().grouped_conv2d_backward(
                xs[0], weights["kernel"], g, groups=self.groups, **self._geometry(xs[0]),
                use_bias=self.use_bias, input_gradient=need_input)
        else:
            dx, dkernel, dbias = grads().conv2d_backward(xs[0], weights["kernel"], g, **self._geometry(xs[0]),
                                                         use_bias=self.use_bias, input_gradient=need_input)
        return Gradients([dx], _kernel_bias(dkernel, dbias))


@register
@dataclass(frozen=True, kw_only=True)
class DepthwiseConv2D(_Windowed):
    """One filter (or ``depth_multiplier`` filters) per input channel (MobileNet, EfficientNet)."""

    depth_multiplier: int = 1
    type: ClassVar[str] = "DepthwiseConv2D"
    tokens: ClassVar[tuple[str, ...]] = ("DWCONV", "DEPTHWISE")
    prefix: ClassVar[str] = "dwconv"
    positional: ClassVar[tuple[str, ...]] = ("kernel",)
    required: ClassVar[int] = 1
    keywords: ClassVar[tuple[str, ...]] = (*_CONV_KW, "multiplier")
    keras_classes: ClassVar[tuple[str, ...]] = ("DepthwiseConv2D",)

    def __post_init__(self) -> None:
        self._check(depth_multiplier=self.depth_multiplier)

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        return cls(name=name, depth_multiplier=read_int("multiplier", args.get("multiplier", 1)),
                   **_user_common(args))

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        return cls(name=name, depth_multiplier=read_int("depth_multiplier", cfg.get("depth_multiplier", 1)),
                   **_keras_common(cfg))

    def output_shape(self, *input_shapes: Shape) -> Shape:
        _, _, d = spatial_input(self, input_shapes[0])
        return (*self.output_hw(input_shapes[0]), d * self.depth_multiplier)

    def param_shapes(self, *input_shapes: Shape) -> dict[str, Shape]:
        _, _, d = spatial_input(self, input_shapes[0])
        shapes: dict[str, Shape] = {"depthwise_kernel": (*self.kernel_size, d, self.depth_multiplier)}
        if self.use_bias:
            shapes["bias"] = (d * self.depth_multiplier,)
        return shapes

    def macs(self, *input_shapes: Shape) -> int:
        return math.prod(self.output_shape(*input_shapes)) * math.prod(self.kernel_size)

    def fan_in(self, param: str, shape: Shape) -> int:
        return shape[0] * shape[1]

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().depthwise_conv2d(xs[0], weights["depthwise_kernel"], weights.get("bias"),
                                      **self._geometry(xs[0]), **finishing(self, ctx))

    has_backward: ClassVar[bool] = True

    def forward_train(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray],
                      ctx: Context) -> tuple[np.ndarray, Any]:
        z = ops().depthwise_conv2d(xs[0], weights["depthwise_kernel"], weights.get("bias"), **self._geometry(xs[0]))
        return activate_train(z, self.activation, fused_alpha(self.activation))

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        g = activation_grad(self.activation, fused_alpha(self.activation), saved, grad)
        dx, dkernel, dbias = grads().depthwise_conv2d_backward(
            xs[0], weights["depthwise_kernel"], g, **self._geometry(xs[0]), use_bias=self.use_bias,
            input_gradient=need_input)
        found = {"depthwise_kernel": dkernel}
        if dbias is not None:
            found["bias"] = dbias
        return Gradients([dx], found)


@register
@dataclass(frozen=True, kw_only=True)
class SeparableConv2D(_Windowed):
    """A depthwise convolution followed by a 1x1 pointwise one (Xception, NASNet)."""

    filters: int
    depth_multiplier: int = 1
    type: ClassVar[str] = "SeparableConv2D"
    tokens: ClassVar[tuple[str, ...]] = ("SEPCONV", "SEPARABLE")
    prefix: ClassVar[str] = "sepconv"
    positional: ClassVar[tuple[str, ...]] = ("filters", "kernel")
    required: ClassVar[int] = 2
    keywords: ClassVar[tuple[str, ...]] = (*_CONV_KW, "multiplier")
    keras_classes: ClassVar[tuple[str, ...]] = ("SeparableConv2D", "SeparableConvolution2D")

    def __post_init__(self) -> None:
        self._check(filters=self.filters, depth_multiplier=self.depth_multiplier)

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        return cls(name=name, filters=read_int("filters", args["filters"]),
                   depth_multiplier=read_int("multiplier", args.get("multiplier", 1)), **_user_common(args))

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        return cls(name=name, filters=read_int("filters", cfg.get("filters")),
                   depth_multiplier=read_int("depth_multiplier", cfg.get("depth_multiplier", 1)),
                   **_keras_common(cfg))

    def output_shape(self, *input_shapes: Shape) -> Shape:
        spatial_input(self, input_shapes[0])
        return (*self.output_hw(input_shapes[0]), self.filters)

    def param_shapes(self, *input_shapes: Shape) -> dict[str, Shape]:
        _, _, d = spatial_input(self, input_shapes[0])
        m = d * self.depth_multiplier
        shapes: dict[str, Shape] = {
            "depthwise_kernel": (*self.kernel_size, d, self.depth_multiplier),
            "pointwise_kernel": (1, 1, m, self.filters),
        }
        if self.use_bias:
            shapes["bias"] = (self.filters,)
        return shapes

    def macs(self, *input_shapes: Shape) -> int:
        out_h, out_w = self.output_hw(input_shapes[0])
        m = input_shapes[0][2] * self.depth_multiplier
        return out_h * out_w * m * (math.prod(self.kernel_size) + self.filters)

    def fan_in(self, param: str, shape: Shape) -> int:
        return shape[0] * shape[1] if param == "depthwise_kernel" else shape[2]

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().separable_conv2d(xs[0], weights["depthwise_kernel"], weights["pointwise_kernel"],
                                      weights.get("bias"), **self._geometry(xs[0]),
                                      **finishing(self, ctx))

    has_backward: ClassVar[bool] = True

    def forward_train(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray],
                      ctx: Context) -> tuple[np.ndarray, Any]:
        z = ops().separable_conv2d(xs[0], weights["depthwise_kernel"], weights["pointwise_kernel"],
                                   weights.get("bias"), **self._geometry(xs[0]))
        return activate_train(z, self.activation, fused_alpha(self.activation))

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        g = activation_grad(self.activation, fused_alpha(self.activation), saved, grad)
        dx, d_depthwise, d_pointwise, dbias = grads().separable_conv2d_backward(
            xs[0], weights["depthwise_kernel"], weights["pointwise_kernel"], g, **self._geometry(xs[0]),
            use_bias=self.use_bias, input_gradient=need_input)
        found = {"depthwise_kernel": d_depthwise, "pointwise_kernel": d_pointwise}
        if dbias is not None:
            found["bias"] = dbias
        return Gradients([dx], found)


@register
@dataclass(frozen=True, kw_only=True)
class Conv2DTranspose(Layer):
    """A transposed convolution ("deconvolution"): each input neuron spreads its kernel
    over a ``stride``-spaced output grid (upsampling decoders, U-Net)."""

    filters: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Literal["valid", "same"] = "valid"
    output_padding: tuple[int, int] | None = None
    dilation: tuple[int, int] = (1, 1)
    use_bias: bool = True
    activation: str | None = None
    type: ClassVar[str] = "Conv2DTranspose"
    spatial: ClassVar[Spatial] = "global"  # the receptive field of an upsampled grid is not tracked
    tokens: ClassVar[tuple[str, ...]] = ("DECONV", "CONVT")
    prefix: ClassVar[str] = "deconv"
    positional: ClassVar[tuple[str, ...]] = ("filters", "kernel")
    required: ClassVar[int] = 2
    keywords: ClassVar[tuple[str, ...]] = ("stride", "pad", "dilation", "activation", "bias", "output_padding")
    keras_classes: ClassVar[tuple[str, ...]] = ("Conv2DTranspose", "Convolution2DTranspose")

    def __post_init__(self) -> None:
        check_positive(self.name, filters=self.filters, kernel_size=self.kernel_size,
                       strides=self.strides, dilation=self.dilation)
        check_same_or_valid(self.name, self.padding)

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        pad = read_padding("pad", args.get("pad", "valid"))
        if pad not in ("valid", "same"):
            raise ModelError(f"`pad` of a transposed convolution must be valid or same. Received: pad={pad}")
        out_pad = args.get("output_padding")
        return cls(name=name, filters=read_int("filters", args["filters"]),
                   kernel_size=read_pair("kernel", args["kernel"]), strides=read_pair("stride", args.get("stride", 1)),
                   padding=pad,  # type: ignore[arg-type]
                   output_padding=None if out_pad is None else read_pair("output_padding", out_pad, 0),
                   dilation=read_pair("dilation", args.get("dilation", 1)),
                   use_bias=read_bool("bias", args.get("bias", True)),
                   activation=read_activation(args.get("activation")))

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        common = _keras_common(cfg)
        del common["floor"]
        out_pad = cfg.get("output_padding")
        return cls(name=name, filters=read_int("filters", cfg.get("filters")),
                   output_padding=None if out_pad is None else read_pair("output_padding", _tuple(out_pad), 0),
                   **common)

    def output_shape(self, *input_shapes: Shape) -> Shape:
        h, w, _ = spatial_input(self, input_shapes[0])
        out = [
            geometry.conv_transpose_output_length(
                n, self.kernel_size[axis], self.strides[axis], self.padding,
                None if self.output_padding is None else self.output_padding[axis], self.dilation[axis])
            for axis, n in enumerate((h, w))
        ]
        if min(out) < 1:
            raise ShapeError(f"layer '{self.name}' (Conv2DTranspose): the output would be empty")
        return out[0], out[1], self.filters

    def param_shapes(self, *input_shapes: Shape) -> dict[str, Shape]:
        _, _, d = spatial_input(self, input_shapes[0])
        shapes: dict[str, Shape] = {"kernel": (*self.kernel_size, self.filters, d)}
        if self.use_bias:
            shapes["bias"] = (self.filters,)
        return shapes

    def macs(self, *input_shapes: Shape) -> int:
        return math.prod(input_shapes[0]) * math.prod(self.kernel_size) * self.filters

    def fan_in(self, param: str, shape: Shape) -> int:
        return shape[0] * shape[1] * shape[3]

    @property
    def activation_name(self) -> str | None:
        return self.activation

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().conv2d_transpose(xs[0], weights["kernel"], weights.get("bias"), strides=self.strides,
                                      padding=self.padding, output_padding=self.output_padding,
                                      dilation=self.dilation, **finishing(self, ctx))

    has_backward: ClassVar[bool] = True

    def forward_train(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray],
                      ctx: Context) -> tuple[np.ndarray, Any]:
        z = ops().conv2d_transpose(xs[0], weights["kernel"], weights.get("bias"), strides=self.strides,
                                   padding=self.padding, output_padding=self.output_padding, dilation=self.dilation)
        return activate_train(z, self.activation, fused_alpha(self.activation))

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        g = activation_grad(self.activation, fused_alpha(self.activation), saved, grad)
        dx, dkernel, dbias = grads().conv2d_transpose_backward(
            xs[0], weights["kernel"], g, strides=self.strides, padding=self.padding,
            output_padding=self.output_padding, dilation=self.dilation, use_bias=self.use_bias,
            input_gradient=need_input)
        return Gradients([dx], _kernel_bias(dkernel, dbias))


@register
@dataclass(frozen=True, kw_only=True)
class LocallyConnected2D(_Windowed):
    """A locally connected layer: a conv layer whose weights are not shared (valid padding)."""

    filters: int
    type: ClassVar[str] = "LocallyConnected2D"
    tokens: ClassVar[tuple[str, ...]] = ("LOCAL",)
    prefix: ClassVar[str] = "local"
    positional: ClassVar[tuple[str, ...]] = ("filters", "kernel")
    required: ClassVar[int] = 2
    keywords: ClassVar[tuple[str, ...]] = ("stride", "pad", "activation", "bias")
    keras_classes: ClassVar[tuple[str, ...]] = ("LocallyConnected2D",)

    def __post_init__(self) -> None:
        self._check(filters=self.filters)
        if self.padding not in ("valid", (0, 0, 0, 0)) or self.dilation != (1, 1):
            raise ModelError(
                f"layer '{self.name}': a locally connected layer supports only valid padding and no "
                f"dilation. Received: padding={self.padding!r}"
            )

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        pad = read_padding("pad", args.get("pad", "valid"))
        if pad not in ("valid", (0, 0, 0, 0)):
            raise ModelError(f"a locally connected layer supports only valid padding. Received: pad={args['pad']}")
        common = _user_common({**args, "pad": "valid"})
        return cls(name=name, filters=read_int("filters", args["filters"]), **common)

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        if str(cfg.get("padding", "valid")).lower() != "valid":
            raise Unsupported("LocallyConnected2D with padding other than valid")
        return cls(name=name, filters=read_int("filters", cfg.get("filters")), **_keras_common(cfg))

    def output_shape(self, *input_shapes: Shape) -> Shape:
        return (*self.output_hw(input_shapes[0]), self.filters)

    def param_shapes(self, *input_shapes: Shape) -> dict[str, Shape]:
        out_h, out_w = self.output_hw(input_shapes[0])
        d = input_shapes[0][2]
        shapes: dict[str, Shape] = {
            "kernel": (out_h * out_w, self.kernel_size[0] * self.kernel_size[1] * d, self.filters)
        }
        if self.use_bias:
            shapes["bias"] = (out_h, out_w, self.filters)
        return shapes

    def params_unshared(self, *input_shapes: Shape) -> int | None:
        return self.params(*input_shapes)

    def macs(self, *input_shapes: Shape) -> int:
        out = self.output_shape(*input_shapes)
        return math.prod(out) * self.kernel_size[0] * self.kernel_size[1] * input_shapes[0][2]

    def fan_in(self, param: str, shape: Shape) -> int:
        return shape[1]

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().locally_connected2d(xs[0], weights["kernel"], weights.get("bias"),
                                         kernel_size=self.kernel_size, strides=self.strides,
                                         **finishing(self, ctx))

    has_backward: ClassVar[bool] = True

    def forward_train(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray],
                      ctx: Context) -> tuple[np.ndarray, Any]:
        z = ops().locally_connected2d(xs[0], weights["kernel"], weights.get("bias"),
                                      kernel_size=self.kernel_size, strides=self.strides)
        return activate_train(z, self.activation, fused_alpha(self.activation))

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        g = activation_grad(self.activation, fused_alpha(self.activation), saved, grad)
        dx, dkernel, dbias = grads().locally_connected2d_backward(
            xs[0], weights["kernel"], g, kernel_size=self.kernel_size, strides=self.strides,
            use_bias=self.use_bias, input_gradient=need_input)
        return Gradients([dx], _kernel_bias(dkernel, dbias))


def _kernel_bias(dkernel: np.ndarray, dbias: np.ndarray | None) -> dict[str, np.ndarray]:
    """The parameter gradients of a layer with a kernel and an optional bias."""
    return {"kernel": dkernel} if dbias is None else {"kernel": dkernel, "bias": dbias}


def check_positive(name: str, **values: int | tuple[int, ...]) -> None:
    """ModelError naming the layer unless every value is a positive integer."""
    for key, value in values.items():
        items = value if isinstance(value, tuple) else (value,)
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in items):
            raise ModelError(
                f"layer '{name}': `{key}` must be a positive integer. Received: {key}={value!r}"
            )


def check_same_or_valid(name: str, padding: object) -> None:
    """ModelError naming the layer unless ``padding`` is "valid" or "same" (pooling, transposed conv)."""
    if padding not in ("valid", "same"):
        raise ModelError(
            f"layer '{name}': unknown value for `padding`. Allowed values are: valid, same. Received: padding={padding!r}"
        )


def check_padding(name: str, padding: object) -> None:
    """ModelError naming the layer unless ``padding`` is valid, same or four non-negative integers."""
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
