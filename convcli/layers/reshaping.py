"""Layers that move values without weights: padding, cropping, upsampling, reshape, permute."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from convcli.errors import ModelError, ShapeError
from convcli.layers.base import (
    Context,
    Gradients,
    Layer,
    Shape,
    Spatial,
    Unsupported,
    Value,
    Window,
    check_channels_last,
    grads,
    is_int,
    keras_padding,
    ops,
    read_padding,
    read_pair,
    register,
    shape_text,
    spatial_input,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def _amounts(name: str, key: str, value: object) -> tuple[int, int, int, int]:
    if (isinstance(value, tuple) and len(value) == 4 and all(is_int(v) and v >= 0 for v in value)):
        return value  # type: ignore[return-value]
    raise ModelError(f"layer '{name}': `{key}` must be four non-negative integers. Received: {key}={value!r}")


@register
@dataclass(frozen=True, kw_only=True)
class ZeroPadding2D(Layer):
    """Zero rows and columns around the input: ``padding`` is (top, bottom, left, right)."""

    padding: tuple[int, int, int, int] = (1, 1, 1, 1)
    type: ClassVar[str] = "ZeroPadding2D"
    spatial: ClassVar[Spatial] = "window"
    tokens: ClassVar[tuple[str, ...]] = ("ZEROPAD",)
    prefix: ClassVar[str] = "zeropad"
    positional: ClassVar[tuple[str, ...]] = ("pad",)
    keras_classes: ClassVar[tuple[str, ...]] = ("ZeroPadding2D",)

    def __post_init__(self) -> None:
        _amounts(self.name, "padding", self.padding)

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        pad = read_padding("pad", args.get("pad", 1))
        if isinstance(pad, str):
            raise ModelError(f"`pad` of ZEROPAD must be integers. Received: pad={pad}")
        return cls(name=name, padding=pad)

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        check_channels_last(cfg)
        return cls(name=name, padding=keras_padding(cfg))

    def output_shape(self, *input_shapes: Shape) -> Shape:
        h, w, d = spatial_input(self, input_shapes[0])
        top, bottom, left, right = self.padding
        return h + top + bottom, w + left + right, d

    def window(self, *input_shapes: Shape) -> Window | None:
        return Window((1, 1), (1, 1), (1, 1), (self.padding[0], self.padding[2]))

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().zero_pad2d(xs[0], self.padding)

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        return Gradients([grads().zero_pad2d_backward(grad, self.padding)], {})


@register
@dataclass(frozen=True, kw_only=True)
class Cropping2D(Layer):
    """Drop rows and columns at the borders: ``cropping`` is (top, bottom, left, right)."""

    cropping: tuple[int, int, int, int] = (0, 0, 0, 0)
    type: ClassVar[str] = "Cropping2D"
    spatial: ClassVar[Spatial] = "window"
    tokens: ClassVar[tuple[str, ...]] = ("CROP",)
    prefix: ClassVar[str] = "crop"
    positional: ClassVar[tuple[str, ...]] = ("pad",)
    keras_classes: ClassVar[tuple[str, ...]] = ("Cropping2D",)

    def __post_init__(self) -> None:
        _amounts(self.name, "cropping", self.cropping)

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        crop = read_padding("crop", args.get("pad", 1))
        if isinstance(crop, str):
            raise ModelError(f"CROP takes integers. Received: {crop}")
        return cls(name=name, cropping=crop)

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        check_channels_last(cfg)
        return cls(name=name, cropping=keras_padding(cfg, 0))

    def output_shape(self, *input_shapes: Shape) -> Shape:
        h, w, d = spatial_input(self, input_shapes[0])
        top, bottom, left, right = self.cropping
        out = (h - top - bottom, w - left - right, d)
        if out[0] < 1 or out[1] < 1:
            raise ShapeError(
                f"layer '{self.name}' (Cropping2D): cropping {self.cropping} leaves nothing of a "
                f"{h}x{w} input"
            )
        return out

    def window(self, *input_shapes: Shape) -> Window | None:
        return Window((1, 1), (1, 1), (1, 1), (-self.cropping[0], -self.cropping[2]))

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().cropping2d(xs[0], self.cropping)

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        return Gradients([grads().cropping2d_backward(grad, self.cropping)], {})


@register
@dataclass(frozen=True, kw_only=True)
class UpSampling2D(Layer):
    """Repeat rows and columns ``size`` times (``nearest``) or interpolate (``bilinear``)."""

    size: tuple[int, int] = (2, 2)
    interpolation: Literal["nearest", "bilinear"] = "nearest"
    type: ClassVar[str] = "UpSampling2D"
    spatial: ClassVar[Spatial] = "global"  # the receptive field of an upsampled grid is not tracked
    tokens: ClassVar[tuple[str, ...]] = ("UPSAMPLE", "UP")
    prefix: ClassVar[str] = "up"
    positional: ClassVar[tuple[str, ...]] = ("kernel",)
    keywords: ClassVar[tuple[str, ...]] = ("interpolation",)
    keras_classes: ClassVar[tuple[str, ...]] = ("UpSampling2D",)

    def __post_init__(self) -> None:
        if self.interpolation not in ("nearest", "bilinear"):
            raise ModelError(
                f"layer '{self.name}': unknown value for `interpolation`. Allowed values are: nearest, "
                f"bilinear. Received: interpolation={self.interpolation}"
            )

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        return cls(name=name, size=read_pair("size", args.get("kernel", 2)),
                   interpolation=str(args.get("interpolation", "nearest")).lower())  # type: ignore[arg-type]

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        check_channels_last(cfg)
        size = cfg.get("size", 2)
        interpolation = str(cfg.get("interpolation", "nearest"))
        if interpolation not in ("nearest", "bilinear"):
            raise Unsupported(f"UpSampling2D with interpolation={interpolation} (allowed: nearest, bilinear)")
        return cls(name=name, size=read_pair("size", tuple(size) if isinstance(size, list) else size),
                   interpolation=interpolation)  # type: ignore[arg-type]

    def output_shape(self, *input_shapes: Shape) -> Shape:
        h, w, d = spatial_input(self, input_shapes[0])
        return h * self.size[0], w * self.size[1], d

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().upsampling2d(xs[0], self.size, self.interpolation)

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        return Gradients([grads().upsampling2d_backward(xs[0].shape, grad, self.size, self.interpolation)], {})


@register
@dataclass(frozen=True, kw_only=True)
class Reshape(Layer):
    """A new shape for the same values (batch kept); one dimension may be -1."""

    target_shape: tuple[int, ...] = ()
    type: ClassVar[str] = "Reshape"
    spatial: ClassVar[Spatial] = "global"
    tokens: ClassVar[tuple[str, ...]] = ("RESHAPE",)
    prefix: ClassVar[str] = "reshape"
    positional: ClassVar[tuple[str, ...]] = ("shape",)
    required: ClassVar[int] = 1
    keras_classes: ClassVar[tuple[str, ...]] = ("Reshape",)

    def __post_init__(self) -> None:
        dims = self.target_shape
        if not dims or not all(is_int(n) and (n >= 1 or n == -1) for n in dims) or list(dims).count(-1) > 1:
            raise ModelError(
                f"layer '{self.name}': `target_shape` must be positive integers (one may be -1). "
                f"Received: target_shape={dims!r}"
            )

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        shape = args["shape"]
        return cls(name=name, target_shape=tuple(shape) if isinstance(shape, (list, tuple)) else (shape,))

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        shape = cfg.get("target_shape")
        if not isinstance(shape, list):
            raise ModelError(f"cannot read target_shape={shape!r}")
        return cls(name=name, target_shape=tuple(shape))

    def output_shape(self, *input_shapes: Shape) -> Shape:
        total = math.prod(input_shapes[0])
        known = math.prod(n for n in self.target_shape if n != -1)
        if -1 in self.target_shape:
            if total % known:
                raise ShapeError(
                    f"layer '{self.name}' (Reshape): cannot reshape {shape_text(input_shapes[0])} "
                    f"({total} values) to {self.target_shape}"
                )
            return tuple(total // known if n == -1 else n for n in self.target_shape)
        if known != total:
            raise ShapeError(
                f"layer '{self.name}' (Reshape): cannot reshape {shape_text(input_shapes[0])} ({total} "
                f"values) to {shape_text(self.target_shape)} ({known} values)"
            )
        return tuple(self.target_shape)

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return xs[0].reshape(len(xs[0]), *self.output_shape(tuple(xs[0].shape[1:])))

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        return Gradients([grads().reshape_backward(xs[0].shape, grad)], {})


@register
@dataclass(frozen=True, kw_only=True)
class Permute(Layer):
    """Reorder the axes (1-based, batch excluded, as Keras: ``(2, 1, 3)`` swaps height and width)."""

    dims: tuple[int, ...] = ()
    type: ClassVar[str] = "Permute"
    spatial: ClassVar[Spatial] = "global"
    tokens: ClassVar[tuple[str, ...]] = ("PERMUTE",)
    prefix: ClassVar[str] = "permute"
    positional: ClassVar[tuple[str, ...]] = ("dims",)
    required: ClassVar[int] = 1
    keras_classes: ClassVar[tuple[str, ...]] = ("Permute",)

    def __post_init__(self) -> None:
        if sorted(self.dims) != list(range(1, len(self.dims) + 1)):
            raise ModelError(
                f"layer '{self.name}': `dims` must be a permutation of 1..{len(self.dims)}. Received: dims={self.dims!r}"
            )

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        dims = args["dims"]
        return cls(name=name, dims=tuple(dims) if isinstance(dims, (list, tuple)) else (dims,))

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        dims = cfg.get("dims")
        if not isinstance(dims, list):
            raise ModelError(f"cannot read dims={dims!r}")
        return cls(name=name, dims=tuple(dims))

    def output_shape(self, *input_shapes: Shape) -> Shape:
        shape = input_shapes[0]
        if len(shape) != len(self.dims):
            raise ShapeError(
                f"layer '{self.name}' (Permute): dims {self.dims} do not match an input of shape {shape_text(shape)}"
            )
        return tuple(shape[d - 1] for d in self.dims)

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().permute(xs[0], self.dims)

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        return Gradients([grads().permute_backward(grad, self.dims)], {})
