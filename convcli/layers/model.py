"""A model: an input shape and a graph of layers (a chain is the common case)."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from convcli.errors import ModelError
from convcli.layers.base import Layer, Shape, is_int

INPUT_NAME = "input"
"""The name layers use to refer to the model's input (unless the model names it otherwise)."""


class Node(NamedTuple):
    """A layer in its place in the graph: what feeds it, and the shapes in and out."""

    layer: Layer
    inputs: tuple[str, ...]
    input_shapes: tuple[Shape, ...]
    output_shape: Shape


@dataclass(frozen=True)
class Model:
    """An input shape (batch excluded) and layers in an order where every layer comes after
    the layers feeding it. A layer's ``inputs`` name those layers (or :attr:`input_name`);
    empty means the layer before it. The model's output is :attr:`output` (default: the
    last layer)."""

    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    name: str = "model"
    class_names: tuple[str, ...] | None = field(default=None)
    weights_path: Path | None = None
    """Weights named by the model file (TOML ``weights = "x.npz"``), absolute; not checked here."""
    input_name: str = INPUT_NAME
    output: str | None = None
    keras_config: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    """The Keras config the model was read from (maps a ``.weights.h5`` back to its layers)."""

    def __post_init__(self) -> None:
        if not self.input_shape or not all(is_int(n) and n >= 1 for n in self.input_shape) or len(self.input_shape) not in (1, 3):
            raise ModelError(
                "the input shape must be (height, width, depth) or (units,) of positive integers. "
                f"Received: {self.input_shape!r}"
            )
        names: dict[str, int] = {}
        for index, layer in enumerate(self.layers):
            if layer.name in names or layer.name == self.input_name:
                raise ModelError(f"two layers are named '{layer.name}'; layer names must be unique")
            names[layer.name] = index
        inbound: dict[str, tuple[str, ...]] = {}
        previous = self.input_name
        for layer in self.layers:
            sources = layer.inputs or (previous,)
            for source in sources:
                if source != self.input_name and source not in names:
                    raise ModelError(
                        f"layer '{layer.name}' takes its input from '{source}', which is not a layer "
                        f"of the model (nor its input, '{self.input_name}')"
                    )
            if layer.arity is not None and len(sources) != layer.arity:
                raise ModelError(
                    f"layer '{layer.name}' ({layer.type}) takes {layer.arity} input(s); it is given "
                    f"{len(sources)}: {', '.join(sources)}"
                )
            inbound[layer.name] = tuple(sources)
            previous = layer.name
        object.__setattr__(self, "layers", _topological(self.layers, inbound, self.input_name))
        object.__setattr__(self, "_inbound", inbound)
        if self.output is not None and self.output not in names:
            raise ModelError(f"the model's output '{self.output}' is not one of its layers")

    def inbound(self, name: str) -> tuple[str, ...]:
        """The names feeding layer ``name`` (the model input is :attr:`input_name`)."""
        return self._inbound[name]  # type: ignore[attr-defined, no-any-return]

    @property
    def output_name(self) -> str:
        """The layer whose output is the model's output."""
        if self.output is not None:
            return self.output
        return self.layers[-1].name if self.layers else self.input_name

    @cached_property
    def _nodes(self) -> tuple[Node, ...]:
        shapes: dict[str, Shape] = {self.input_name: tuple(self.input_shape)}
        nodes = []
        for layer in self.layers:
            sources = self.inbound(layer.name)
            in_shapes = tuple(shapes[s] for s in sources)
            out = layer.output_shape(*in_shapes)
            shapes[layer.name] = out
            nodes.append(Node(layer, sources, in_shapes, out))
        return tuple(nodes)

    def nodes(self) -> tuple[Node, ...]:
        """Every layer in order with its inputs and shapes; ShapeError at the first that does not fit."""
        return self._nodes

    def shapes(self) -> list[tuple[Layer, Shape, Shape]]:
        """Each layer with its (first) input shape and its output shape."""
        return [(node.layer, node.input_shapes[0], node.output_shape) for node in self.nodes()]

    def output_shape(self) -> Shape:
        """Shape of the model's output (batch excluded)."""
        name = self.output_name
        for node in self.nodes():
            if node.layer.name == name:
                return node.output_shape
        return tuple(self.input_shape)

    def param_shapes(self) -> dict[str, Shape]:
        """Every parameter array as ``"<layer>.<param>"`` -> shape (the weights-file keys)."""
        return {
            f"{node.layer.name}.{key}": shape
            for node in self.nodes()
            if node.layer.shares is None
            for key, shape in node.layer.param_shapes(*node.input_shapes).items()
        }

    def count_params(self) -> int:
        """Total number of parameters, as Keras' ``count_params`` (a shared layer's once)."""
        return sum(node_params(node) for node in self.nodes())

    def param_bytes(self) -> int:
        """float32 bytes of every parameter."""
        return 4 * sum(math.prod(shape) for shape in self.param_shapes().values())


def node_params(node: Node) -> int:
    """Parameters a node adds to the model: its layer's, or 0 for another call of a shared layer."""
    return 0 if node.layer.shares is not None else node.layer.params(*node.input_shapes)


def _topological(layers: tuple[Layer, ...], inbound: dict[str, tuple[str, ...]], input_name: str) -> tuple[Layer, ...]:
    """``layers`` reordered so every layer follows its inputs (stable: written order where it
    allows); ModelError naming the layers of a cycle."""
    index = {layer.name: i for i, layer in enumerate(layers)}
    if all(index.get(s, -1) < i for i, layer in enumerate(layers) for s in inbound[layer.name]):
        return layers
    waiting = {layer.name: sum(1 for s in inbound[layer.name] if s != input_name) for layer in layers}
    consumers: dict[str, list[str]] = {}
    for layer in layers:
        for source in inbound[layer.name]:
            consumers.setdefault(source, []).append(layer.name)
    ready = [index[name] for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[Layer] = []
    while ready:
        layer = layers[heapq.heappop(ready)]
        order.append(layer)
        for consumer in consumers.get(layer.name, []):
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                heapq.heappush(ready, index[consumer])
    if len(order) != len(layers):
        stuck = [layer.name for layer in layers if waiting[layer.name] > 0]
        raise ModelError(f"the layers {', '.join(stuck[:6])}{' ...' if len(stuck) > 6 else ''} feed each other in a cycle")
    return tuple(order)
