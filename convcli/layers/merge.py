"""Merge layers: the joins of a graph (residual adds, concatenated branches, gates)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from convcli.errors import ModelError, ShapeError
from convcli.layers.base import (
    Context,
    Gradients,
    Layer,
    Shape,
    Unsupported,
    Value,
    grads,
    is_int,
    ops,
    read_float,
    read_int,
    register,
    shape_text,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def _shapes_text(shapes: Sequence[Shape]) -> str:
    return ", ".join(shape_text(s) for s in shapes)


@dataclass(frozen=True, kw_only=True)
class ElementwiseMerge(Layer):
    """An element-wise join of two or more inputs (Keras broadcasting: a 1x1xD gate
    multiplies an HxWxD volume). ``constant`` is a number taking part as one more operand
    (Keras ops such as ``x + 3.0`` in MobileNetV3), at position ``constant_index``."""

    constant: float | None = None
    constant_index: int = 1
    arity: ClassVar[int | None] = None
    kind: ClassVar[str] = ""
    """The ops.merge operation."""

    def output_shape(self, *input_shapes: Shape) -> Shape:
        self._check_count(input_shapes)
        ranks = {len(s) for s in input_shapes}
        if len(ranks) != 1:
            raise ShapeError(
                f"layer '{self.name}' ({self.type}) cannot merge shapes of different ranks: "
                f"{_shapes_text(input_shapes)}"
            )
        out: list[int] = []
        for dims in zip(*input_shapes):
            sizes = set(dims) - {1}
            if len(sizes) > 1:
                raise ShapeError(
                    f"layer '{self.name}' ({self.type}) cannot merge incompatible shapes "
                    f"{_shapes_text(input_shapes)}"
                )
            out.append(sizes.pop() if sizes else 1)
        return tuple(out)

    def _check_count(self, input_shapes: Sequence[Shape]) -> None:
        operands = len(input_shapes) + (self.constant is not None)
        if operands < 2:
            raise ModelError(f"layer '{self.name}' ({self.type}) needs at least two inputs; it has {len(input_shapes)}")

    def _operands(self, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The inputs, with the constant (one value per sample, broadcast) at its place."""
        operands = list(xs)
        if self.constant is not None:
            import numpy as np

            shape = (len(xs[0]),) + (1,) * (xs[0].ndim - 1)
            dtype = np.float64 if any(x.dtype == np.float64 for x in xs) else np.float32
            operands.insert(self.constant_index, np.full(shape, self.constant, dtype))
        return operands

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().merge(self.kind, self._operands(xs))

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        found = grads().merge_backward(self.kind, self._operands(xs), grad)
        if self.constant is not None:
            del found[self.constant_index]  # a constant learns nothing
        return Gradients(found, {})


@register
@dataclass(frozen=True, kw_only=True)
class Add(ElementwiseMerge):
    """x + y (+ ...): the residual connection."""

    type: ClassVar[str] = "Add"
    kind: ClassVar[str] = "add"
    tokens: ClassVar[tuple[str, ...]] = ("ADD",)
    prefix: ClassVar[str] = "add"
    keras_classes: ClassVar[tuple[str, ...]] = ("Add",)


@register
@dataclass(frozen=True, kw_only=True)
class Subtract(ElementwiseMerge):
    """x - y (exactly two operands)."""

    type: ClassVar[str] = "Subtract"
    kind: ClassVar[str] = "subtract"
    tokens: ClassVar[tuple[str, ...]] = ("SUBTRACT",)
    prefix: ClassVar[str] = "subtract"
    keras_classes: ClassVar[tuple[str, ...]] = ("Subtract",)

    def _check_count(self, input_shapes: Sequence[Shape]) -> None:
        if len(input_shapes) + (self.constant is not None) != 2:
            raise ModelError(f"layer '{self.name}' (Subtract) needs exactly two inputs; it has {len(input_shapes)}")


@register
@dataclass(frozen=True, kw_only=True)
class Multiply(ElementwiseMerge):
    """x * y (* ...): gates such as squeeze-and-excitation."""

    type: ClassVar[str] = "Multiply"
    kind: ClassVar[str] = "multiply"
    tokens: ClassVar[tuple[str, ...]] = ("MULTIPLY", "MUL")
    prefix: ClassVar[str] = "multiply"
    keras_classes: ClassVar[tuple[str, ...]] = ("Multiply",)


@register
@dataclass(frozen=True, kw_only=True)
class Average(ElementwiseMerge):
    """The mean of the inputs."""

    type: ClassVar[str] = "Average"
    kind: ClassVar[str] = "average"
    tokens: ClassVar[tuple[str, ...]] = ("AVERAGE",)
    prefix: ClassVar[str] = "average"
    keras_classes: ClassVar[tuple[str, ...]] = ("Average",)


@register
@dataclass(frozen=True, kw_only=True)
class Maximum(ElementwiseMerge):
    """The element-wise maximum of the inputs."""

    type: ClassVar[str] = "Maximum"
    kind: ClassVar[str] = "maximum"
    tokens: ClassVar[tuple[str, ...]] = ("MAXIMUM",)
    prefix: ClassVar[str] = "maximum"
    keras_classes: ClassVar[tuple[str, ...]] = ("Maximum",)


@register
@dataclass(frozen=True, kw_only=True)
class Minimum(ElementwiseMerge):
    """The element-wise minimum of the inputs."""

    type: ClassVar[str] = "Minimum"
    kind: ClassVar[str] = "minimum"
    tokens: ClassVar[tuple[str, ...]] = ("MINIMUM",)
    prefix: ClassVar[str] = "minimum"
    keras_classes: ClassVar[tuple[str, ...]] = ("Minimum",)


@register
@dataclass(frozen=True, kw_only=True)
class Concatenate(Layer):
    """Inputs side by side along ``axis`` (the channels, -1, by default: Inception, DenseNet)."""

    axis: int = -1
    type: ClassVar[str] = "Concatenate"
    arity: ClassVar[int | None] = None
    tokens: ClassVar[tuple[str, ...]] = ("CONCAT", "CONCATENATE")
    prefix: ClassVar[str] = "concat"
    keywords: ClassVar[tuple[str, ...]] = ("axis",)
    keras_classes: ClassVar[tuple[str, ...]] = ("Concatenate",)

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        return cls(name=name, axis=read_int("axis", args.get("axis", -1), None))

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        axis = cfg.get("axis", -1)
        if not is_int(axis) or axis == 0:
            raise Unsupported(f"Concatenate over axis={axis}")
        return cls(name=name, axis=axis)

    def _axis(self, rank: int) -> int:
        axis = self.axis - 1 if self.axis > 0 else rank + self.axis  # Keras counts the batch as axis 0
        if not 0 <= axis < rank:
            raise ShapeError(f"layer '{self.name}' (Concatenate): axis {self.axis} is outside a rank-{rank} input")
        return axis

    def output_shape(self, *input_shapes: Shape) -> Shape:
        if len(input_shapes) < 2:
            raise ModelError(f"layer '{self.name}' (Concatenate) needs at least two inputs; it has {len(input_shapes)}")
        rank = len(input_shapes[0])
        axis = self._axis(rank)
        for shape in input_shapes:
            if len(shape) != rank or any(a != b for i, (a, b) in enumerate(zip(shape, input_shapes[0])) if i != axis):
                raise ShapeError(
                    f"layer '{self.name}' (Concatenate) cannot join shapes {_shapes_text(input_shapes)} "
                    f"along axis {self.axis}: the other axes differ"
                )
        return tuple(sum(s[axis] for s in input_shapes) if i == axis else n for i, n in enumerate(input_shapes[0]))

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        return ops().merge("concatenate", xs, axis=self.axis)

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        return Gradients(grads().merge_backward("concatenate", xs, grad, axis=self._axis(xs[0].ndim - 1) + 1), {})


@register
@dataclass(frozen=True, kw_only=True)
class CustomScaleLayer(Layer):
    """``x + scale * residual``: InceptionResNetV2's scaled residual join (Keras'
    ``keras.src.applications.inception_resnet_v2.CustomScaleLayer``: inputs[0] + inputs[1] * scale)."""

    scale: float = 1.0
    type: ClassVar[str] = "CustomScaleLayer"
    arity: ClassVar[int | None] = 2
    tokens: ClassVar[tuple[str, ...]] = ("SCALEDADD",)
    prefix: ClassVar[str] = "scaledadd"
    positional: ClassVar[tuple[str, ...]] = ("scale",)
    keras_classes: ClassVar[tuple[str, ...]] = ("CustomScaleLayer",)

    @classmethod
    def from_args(cls, name: str, args: dict[str, Value], token: str) -> Layer:
        return cls(name=name, scale=read_float("scale", args.get("scale", 1.0)))

    @classmethod
    def from_keras(cls, name: str, cfg: Mapping[str, Any], keras_class: str) -> Layer:
        return cls(name=name, scale=read_float("scale", cfg.get("scale", 1.0)))

    def output_shape(self, *input_shapes: Shape) -> Shape:
        if input_shapes[0] != input_shapes[1]:
            raise ShapeError(
                f"layer '{self.name}' (CustomScaleLayer) cannot add shapes {_shapes_text(input_shapes)}"
            )
        return tuple(input_shapes[0])

    def forward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
        import numpy as np

        scale = np.float64 if xs[1].dtype == np.float64 else np.float32
        out = xs[1] * scale(self.scale)
        out += xs[0]
        return out

    has_backward: ClassVar[bool] = True

    def backward(self, weights: Mapping[str, np.ndarray], xs: Sequence[np.ndarray], out: np.ndarray,
                 saved: Any, grad: np.ndarray, need_input: bool = True) -> Gradients:
        return Gradients([grad, grads().rescaling_backward(grad, self.scale)], {})
