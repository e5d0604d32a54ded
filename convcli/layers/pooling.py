"""Pooling layers: max and average windows, global max and average."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from convcli import geometry
from convcli.errors import ModelError
from convcli.layers.base import (
    Context,
    Gradients,
    Layer,
    Shape,
    Spatial,
    Value,
    Window,
    check_channels_last,
    grads,
    keras_same_or_valid,
    ops,
    read_bool,
    read_pair,
    register,
    spatial_input,
    window_length,
)
from convcli.layers.conv import check_positive, check_same_or_valid

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def _pool_padding(value: Value) -> Literal["same", "valid"]:
    if isinstance(value, str) and value.lower() in ("same", "valid"):
        return "same" if value.lower() == "same" else "valid"
    if value == 0 and not isinstance(value, bool):
        return "valid"
    raise ModelError(
        f"unknown value for `pad` of a pooling layer. Allowed values are: valid, same. Received: pad={value}"
    )


@dataclass(frozen=True, kw_only=True)
class _Pooling2D(Layer):
    pool_size: tuple[int, int] = (2, 2)
    strides: tuple[int, int] | None = None
    """None means the pool size, as in Keras."""
    padding: Literal["valid", "same"] = "valid"
    floor: bool = False
    spatial: ClassVar[Spatial] = "window"
    positional: ClassVar[tuple[str, ...]] = ("kernel",)
    keywords: ClassVar[tuple[str, ...]] = ("stride", "pad")

    def __post_init__(self) -> None:
        if self.strides is None:
            object.__setattr__(self, "strides", self.pool_size)
        check_positive(self.name, pool_size=self.pool_size, strides=self._strides)
        check_same_or_valid(self.name, self.padding)

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        size = read_pair("kernel", args.get("kernel", 2))
        return cls(name=name, pool_size=size,
                   strides=read_pair("stride", args["stride"]) if "stride" in args else size,
                   padding=_pool_padding(args.get("pad", "valid")))

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        check_channels_last(cfg)
        size = read_pair("pool_size", _tuple(cfg.get("pool_size", 2)))
        strides = cfg.get("strides")
        return cls(name=name, pool_size=size,
                   strides=size if strides is None else read_pair("strides", _tuple(strides)),
                   padding=keras_same_or_valid(cfg), floor=True)

    @property
    def _strides(self) -> tuple[int, int]:
        return self.strides if self.strides is not None else self.pool_size

    def output_shape(self, *input_shapes: Shape) -> Shape:
        h, w, d = spatial_input(self, input_shapes[0])
        out_h = window_length(self, "height", h, self.pool_size[0], self._strides[0], self.padding, floor=self.floor)
        out_w = window_length(self, "width", w, self.pool_size[1], self._strides[1], self.padding, floor=self.floor)
        return out_h, out_w, d

    def padding_amounts(self, input_shape: Shape) -> tuple[int, int, int, int]:
        """Padding (top, bottom, left, right) resolved for ``input_shape``."""
        h, w, _ = spatial_input(self, input_shape)
        top, bottom = geometry.padding_amounts(h, self.pool_size[0], self._strides[0], self.padding)
        left, right = geometry.padding_amounts(w, self.pool_size[1], self._strides[1], self.padding)
        return top, bottom, left, right

    def window(self, *input_shapes: Shape) -> Window | None:
        top, _, left, _ = self.padding_amounts(input_shapes[0])
        return Window(self.pool_size, self._strides, (1, 1), (top, left))

    def unreached(self, *input_shapes: Shape) -> tuple[int, int] | None:
        h, w, _ = spatial_input(self, input_shapes[0])
        rows = geometry.unreached(h, self.pool_size[0], self._strides[0], self.padding)
        cols = geometry.unreached(w, self.pool_size[1], self._strides[1], self.padding)
        return (rows, cols) if rows or cols else None


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@register
@dataclass(frozen=True, kw_only=True)
class MaxPooling2D(_Pooling2D):
    """Max pooling (the lecture's POOL); strides default to the pool size."""

    type: ClassVar[str] = "MaxPooling2D"
    tokens: ClassVar[tuple[str, ...]] = ("POOL", "MAXPOOL")
    prefix: ClassVar[str] = "pool"
    keras_classes: ClassVar[tuple[str, ...]] = ("MaxPooling2D", "MaxPool2D")

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().max_pool2d(xs[0], self.pool_size, self._strides, self.padding)

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        return Gradients([grads().max_pool2d_backward(xs[0], grad, self.pool_size, self._strides, self.padding)], {})


@register
@dataclass(frozen=True, kw_only=True)
class AveragePooling2D(_Pooling2D):
    """Average pooling; strides default to the pool size; ``same`` padding averages only the
    real inputs under the window (Keras)."""

    type: ClassVar[str] = "AveragePooling2D"
    tokens: ClassVar[tuple[str, ...]] = ("AVGPOOL",)
    prefix: ClassVar[str] = "avgpool"
    keras_classes: ClassVar[tuple[str, ...]] = ("AveragePooling2D", "AvgPool2D")

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().avg_pool2d(xs[0], self.pool_size, self._strides, self.padding)

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        return Gradients([grads().avg_pool2d_backward(xs[0].shape, grad, self.pool_size, self._strides,
                                                     self.padding)], {})


@dataclass(frozen=True, kw_only=True)
class _GlobalPooling2D(Layer):
    keepdims: bool = False
    """Keep height and width as 1 x 1 (Keras' ``keepdims=True``, MobileNetV3's squeeze-excite)."""
    spatial: ClassVar[Spatial] = "global"
    keywords: ClassVar[tuple[str, ...]] = ("keepdims",)

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        return cls(name=name, keepdims=read_bool("keepdims", args.get("keepdims", False)))

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        check_channels_last(cfg)
        return cls(name=name, keepdims=read_bool("keepdims", cfg.get("keepdims", False)))

    def output_shape(self, *input_shapes: Shape) -> Shape:
        d = spatial_input(self, input_shapes[0])[2]
        return (1, 1, d) if self.keepdims else (d,)

    def _finish(self, pooled: np.ndarray) -> np.ndarray:
        return pooled[:, None, None, :] if self.keepdims else pooled

    def _unfinish(self, grad: np.ndarray) -> np.ndarray:
        return grad.reshape(len(grad), -1)


@register
@dataclass(frozen=True, kw_only=True)
class GlobalAveragePooling2D(_GlobalPooling2D):
    """Average over height and width: (H, W, D) -> (D,)."""

    type: ClassVar[str] = "GlobalAveragePooling2D"
    tokens: ClassVar[tuple[str, ...]] = ("GAP",)
    prefix: ClassVar[str] = "gap"
    keras_classes: ClassVar[tuple[str, ...]] = ("GlobalAveragePooling2D", "GlobalAvgPool2D")

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return self._finish(ops().global_avg_pool2d(xs[0]))

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        return Gradients([grads().global_avg_pool2d_backward(xs[0].shape, self._unfinish(grad))], {})


@register
@dataclass(frozen=True, kw_only=True)
class GlobalMaxPooling2D(_GlobalPooling2D):
    """Maximum over height and width: (H, W, D) -> (D,)."""

    type: ClassVar[str] = "GlobalMaxPooling2D"
    tokens: ClassVar[tuple[str, ...]] = ("GMP",)
    prefix: ClassVar[str] = "gmp"
    keras_classes: ClassVar[tuple[str, ...]] = ("GlobalMaxPooling2D", "GlobalMaxPool2D")

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return self._finish(ops().global_max_pool2d(xs[0]))

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        return Gradients([grads().global_max_pool2d_backward(xs[0], self._unfinish(grad))], {})
