"""A model's per-layer arithmetic as plain data (pure Python; only the CLI draws tables).

For every layer: output shape, parameters (shared, and if unshared for conv layers),
multiply-accumulates, receptive field (size and jump, in input pixels) and activation
memory (float32 bytes of the layer's output, batch of one). Totals: parameters and their
float32 size, MACs and FLOPs (2 x MACs), and the peak activation memory (the largest
total of the outputs alive while one layer runs: its inputs, every output a later layer
still needs, and its own output).

>>> from convcli.spec import parse_arrow
>>> s = summarize(parse_arrow("INPUT(32,32,3) => CONV(8,3,pad=1) => POOL(2) => FC(10)"))
>>> s.total_params, s.rows[1].receptive_field
(20714, (4, 4, 2, 2))
"""

from __future__ import annotations

import math
import sys
import types
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from convcli import geometry
from convcli.errors import ShapeError
from convcli.layers import Model, Shape, node_params, output_activation

BYTES_PER_FLOAT32 = 4


@dataclass(frozen=True)
class Row:
    """One layer of the summary."""

    name: str
    type: str
    input_shape: Shape
    output_shape: Shape
    params: int
    params_unshared: int | None
    macs: int
    receptive_field: tuple[int, int, int, int] | None
    """(size along height, size along width, jump along height, jump along width) in input
    pixels; None once every neuron sees the whole input (Flatten, Dense, global pooling)."""
    activation_bytes: int
    trainable_params: int = 0
    """Parameters updated by training (all but BatchNormalization's moving statistics)."""
    activation: str | None = None
    """The fused activation (Keras' ``activation=``) or the Activation layer's function."""
    inputs: tuple[str, ...] = ()
    """The layers feeding this one (the model input by its name)."""
    unreached: tuple[int, int] | None = None
    """Rows and columns at the bottom/right that the layer's windows never read (Keras floors
    a size that does not fit; imported models only)."""

    @property
    def note(self) -> str | None:
        """The floored-size note (``window misses 1 row, 0 columns``), None when all is read."""
        if self.unreached is None:
            return None
        rows, cols = self.unreached
        return (f"windows never reach the last {rows} row{'s' if rows != 1 else ''} and "
                f"{cols} column{'s' if cols != 1 else ''}")

    def to_json(self) -> dict[str, Any]:
        """The row as JSON-ready data (SPEC keys)."""
        rf: dict[str, Any] | None = None
        if self.receptive_field is not None:
            rh, rw, jh, jw = self.receptive_field
            rf = {"size": [rh, rw], "jump": [jh, jw]}
        return {
            "name": self.name,
            "type": self.type,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "params": self.params,
            "params_unshared": self.params_unshared,
            "trainable_params": self.trainable_params,
            "macs": self.macs,
            "flops": 2 * self.macs,
            "receptive_field": rf,
            "activation_bytes": self.activation_bytes,
            "activation": self.activation,
            "inputs": list(self.inputs),
            "note": self.note,
        }


@dataclass(frozen=True)
class Summary:
    """Per-layer rows and the model's totals."""

    name: str
    input_shape: Shape
    rows: tuple[Row, ...]
    total_params: int
    trainable_params: int
    total_macs: int
    peak_activation_bytes: int

    @property
    def non_trainable_params(self) -> int:
        """BatchNormalization's moving mean and variance, as Keras counts them."""
        return self.total_params - self.trainable_params

    @property
    def params_bytes(self) -> int:
        """Size of the parameters as float32."""
        return self.total_params * BYTES_PER_FLOAT32

    @property
    def total_flops(self) -> int:
        """FLOPs counted as 2 per multiply-accumulate."""
        return 2 * self.total_macs

    output_name: str = ""
    """The layer giving the model's output (the last row unless the model says otherwise)."""
    input_name: str = "input"
    """The name layers use for the model's input."""

    @property
    def is_chain(self) -> bool:
        """True when every layer reads the one before it (the first: the model's input)."""
        previous = self.input_name
        for row in self.rows:
            if row.inputs and row.inputs != (previous,):
                return False
            previous = row.name
        return True

    @property
    def output_shape(self) -> Shape:
        for row in self.rows:
            if row.name == self.output_name:
                return row.output_shape
        return self.rows[-1].output_shape if self.rows else self.input_shape

    def __str__(self) -> str:
        """The table and totals as ``convcli summary`` prints them into a pipe (80 columns)."""
        from convcli.tables import summary_text

        return summary_text(self)

    def to_json(self) -> dict[str, Any]:
        """The summary as one JSON-ready document."""
        return {
            "model": self.name,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "layers": [row.to_json() for row in self.rows],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "params_bytes": self.params_bytes,
            "total_macs": self.total_macs,
            "total_flops": self.total_flops,
            "input_bytes": _bytes(self.input_shape),
            "peak_activation_bytes": self.peak_activation_bytes,
        }

    def to_dot(self) -> str:
        r"""The graph in Graphviz DOT: a box per layer with its type and output shape, an edge
        per connection; joins are filled so merges stand out (``| dot -Tsvg > model.svg``).

        >>> from convcli.spec import parse_arrow
        >>> print(summarize(parse_arrow("INPUT(8,8,3) => RESIDUAL(CONV(3,3,pad=same))")).to_dot())
        digraph "model" {
          rankdir=TB;
          node [shape=box, style="rounded", fontname="Helvetica", fontsize=10];
          "input" [label="input\nInput\n8x8x3"];
          "conv1" [label="conv1\nConv2D\n8x8x3\n84 params"];
          "add1" [label="add1\nAdd\n8x8x3", style="rounded,filled", fillcolor="#dde8f5"];
          "input" -> "conv1";
          "input" -> "add1";
          "conv1" -> "add1";
        }
        """

        def quote(text: str) -> str:
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

        def label(parts: list[str]) -> str:
            return "label=" + "\\n".join(quote(part)[1:-1] for part in parts).join('""')

        lines = [
            f"digraph {quote(self.name)} {{",
            "  rankdir=TB;",
            '  node [shape=box, style="rounded", fontname="Helvetica", fontsize=10];',
            f"  {quote(self.input_name)} [{label([self.input_name, 'Input', _shape_x(self.input_shape)])}];",
        ]
        for row in self.rows:
            if row.type == "Activation" and row.activation:
                kind = f"Activation: {row.activation}"
            else:
                kind = row.type + (f" + {row.activation}" if row.activation else "")
            parts = [row.name, kind, _shape_x(row.output_shape)]
            if row.params:
                parts.append(f"{row.params:,} params")
            if row.note:
                parts.append(row.note)
            extra = ', style="rounded,filled", fillcolor="#dde8f5"' if len(row.inputs) > 1 else ""
            lines.append(f"  {quote(row.name)} [{label(parts)}{extra}];")
        for row in self.rows:
            for source in row.inputs:
                lines.append(f"  {quote(source)} -> {quote(row.name)};")
        lines.append("}")
        return "\n".join(lines)

    CSV_COLUMNS = (
        "name", "type", "output_shape", "params", "params_unshared", "macs",
        "receptive_field", "jump", "activation_bytes",
    )

    def csv_rows(self) -> list[list[str]]:
        """Rows for CSV export (header first); shapes as ``55x55x96``, empty cells for n/a."""
        out: list[list[str]] = [list(self.CSV_COLUMNS)]
        for row in self.rows:
            rf, jump = "", ""
            if row.receptive_field is not None:
                rh, rw, jh, jw = row.receptive_field
                rf, jump = f"{rh}x{rw}", f"{jh}x{jw}"
            out.append([
                row.name, row.type, "x".join(map(str, row.output_shape)), str(row.params),
                "" if row.params_unshared is None else str(row.params_unshared), str(row.macs),
                rf, jump, str(row.activation_bytes),
            ])
        return out


def _shape_x(shape: Shape) -> str:
    return "x".join(str(n) for n in shape)


def _bytes(shape: Shape) -> int:
    return BYTES_PER_FLOAT32 * math.prod(shape)


def summarize(model: Model) -> Summary:
    """Compute the summary of ``model`` (a chain or any graph).

    The receptive field of a join is that of its widest input; once a layer sees the whole
    input (Flatten, global pooling) or changes the layout (Reshape, upsampling), it is no
    longer tracked. The peak activation memory is the largest total of the outputs alive
    while one layer runs (its inputs, every output a later layer still needs, its output).

    Raises:
        ShapeError: at the first layer that does not fit, naming it and the fractional size.
    """
    nodes = model.nodes()
    if not nodes:
        raise ShapeError("the model has no layers")
    # receptive field per tensor: (size, jump, start) per axis, None once no longer tracked
    Field = tuple[list[int], list[int], list[Fraction]]
    fields: dict[str, Field | None] = {
        model.input_name: ([1, 1], [1, 1], [Fraction(1, 2), Fraction(1, 2)]) if len(model.input_shape) == 3 else None
    }
    consumers: dict[str, int] = {model.output_name: 1}
    for node in nodes:
        for source in node.inputs:
            consumers[source] = consumers.get(source, 0) + 1
    alive: dict[str, int] = {model.input_name: _bytes(tuple(model.input_shape))}
    peak = 0
    rows: list[Row] = []
    for node in nodes:
        layer, in_shapes, out_shape = node.layer, node.input_shapes, node.output_shape
        inputs = [fields[source] for source in node.inputs]
        kind = layer.spatial_kind(*in_shapes)
        field: Field | None = None
        if kind != "global" and all(f is not None for f in inputs):
            widest = max(inputs, key=lambda f: f[0][0] * f[0][1])  # type: ignore[index]
            assert widest is not None
            size, jump, start = list(widest[0]), list(widest[1]), list(widest[2])
            if kind == "window":
                window = layer.window(*in_shapes)
                assert window is not None
                for axis in (0, 1):
                    size[axis], jump[axis], start[axis] = geometry.receptive_field_step(
                        size[axis], jump[axis], start[axis], window.kernel[axis], window.strides[axis],
                        window.pad_before[axis], window.dilation[axis],
                    )
            field = (size, jump, start)
        fields[layer.name] = field
        out_bytes = _bytes(out_shape)
        peak = max(peak, sum(alive.values()) + out_bytes)
        alive[layer.name] = out_bytes
        for source in node.inputs:
            consumers[source] -= 1
            if consumers[source] == 0:
                alive.pop(source, None)
        if consumers.get(layer.name, 0) == 0:
            alive.pop(layer.name, None)
        rows.append(Row(
            name=layer.name,
            type=layer.type,
            input_shape=in_shapes[0],
            output_shape=out_shape,
            params=node_params(node),
            params_unshared=layer.params_unshared(*in_shapes),
            macs=layer.macs(*in_shapes),
            receptive_field=None if field is None else (field[0][0], field[0][1], field[1][0], field[1][1]),
            activation_bytes=out_bytes,
            trainable_params=0 if layer.shares else layer.trainable_params(*in_shapes),
            activation=output_activation(layer),
            inputs=node.inputs,
            unreached=layer.unreached(*in_shapes) if getattr(layer, "floor", False) else None,
        ))
    return Summary(
        name=model.name,
        input_shape=tuple(model.input_shape),
        rows=tuple(rows),
        total_params=sum(r.params for r in rows),
        trainable_params=sum(r.trainable_params for r in rows),
        total_macs=sum(r.macs for r in rows),
        peak_activation_bytes=peak,
        output_name=model.output_name,
        input_name=model.input_name,
    )


# --------------------------------------------------------------------------------------
# One layer, worked as the lecture does it (`convcli shapes`)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxisWorking:
    """The output-size formula along one axis, with the numbers substituted."""

    axis: str  # "width" / "height"
    n: int
    kernel: int  # effective (dilated) extent
    stride: int
    pad_before: int
    pad_after: int
    output: int
    formula: str
    substituted: str


@dataclass(frozen=True)
class LayerArithmetic:
    """Everything `convcli shapes` prints for one CONV or POOL layer."""

    kind: str  # "conv" / "pool"
    input_shape: tuple[int, int, int]
    kernel: int
    dilation: int
    stride: int
    padding: int | str
    filters: int
    width: AxisWorking
    height: AxisWorking
    output_shape: tuple[int, int, int]
    neurons: int
    weights_per_filter: int
    params_shared: int
    params_unshared: int
    macs: int

    def to_json(self) -> dict[str, Any]:
        """JSON document with the SPEC keys (output, neurons, weights_per_filter, params_...)."""
        h, w, d = self.input_shape
        oh, ow, od = self.output_shape
        return {
            "layer": self.kind,
            "input": {"height": h, "width": w, "depth": d},
            "kernel": self.kernel,
            "effective_kernel": geometry.effective_kernel(self.kernel, self.dilation),
            "dilation": self.dilation,
            "stride": self.stride,
            "padding": {
                "top": self.height.pad_before, "bottom": self.height.pad_after,
                "left": self.width.pad_before, "right": self.width.pad_after,
            },
            "filters": self.filters if self.kind == "conv" else None,
            "formula": {"width": self.width.substituted, "height": self.height.substituted},
            "output": {"height": oh, "width": ow, "depth": od},
            "neurons": self.neurons,
            "weights_per_filter": self.weights_per_filter,
            "bias_per_filter": 1 if self.kind == "conv" else 0,
            "params_shared": self.params_shared,
            "params_unshared": self.params_unshared,
            "macs": self.macs,
            "flops": 2 * self.macs,
        }


def _axis(axis: str, letter: str, n: int, kernel: int, stride: int, padding: int | str,
          dilation: int, pool: bool) -> AxisWorking:
    k = geometry.effective_kernel(kernel, dilation)
    if padding == "same":
        before, after = geometry.same_padding(n, kernel, stride, dilation)
        out = geometry.conv_output_length(n, kernel, stride, "same", dilation)
        return AxisWorking(
            axis, n, k, stride, before, after, out,
            f"ceil({letter}/S)",
            f"ceil({n}/{stride}) = {out}  (padding {before} before, {after} after, as Keras)",
        )
    assert isinstance(padding, int)
    exact = geometry.exact_output_length(n, kernel, stride, padding, dilation)
    formula = f"({letter} - F)/S + 1" if pool and padding == 0 else f"({letter} - F + 2P)/S + 1"
    middle = f"({n} - {k})" if pool and padding == 0 else f"({n} - {k} + 2*{padding})"
    substituted = f"{middle}/{stride} + 1 = {geometry.format_fraction(exact)}"
    if n + 2 * padding < k:
        raise ShapeError(
            f"the {'window' if pool else 'filter'} of size {k} is larger than the padded {axis} "
            f"{n + 2 * padding}"
        )
    if exact.denominator != 1:
        paddings = sorted(geometry.fitting_paddings(n, k, stride, near=padding), key=lambda p: (abs(p - padding), p))
        strides = sorted(geometry.fitting_strides(n, k, padding, near=stride), key=lambda s: (abs(s - stride), s))
        raise ShapeError(
            f"output {axis}: {substituted} is not an integer: the neurons do not fit. "
            f"Paddings that fit with S={stride}: {', '.join(map(str, paddings)) or 'none'}; "
            f"strides that fit with P={padding}: {', '.join(map(str, strides)) or 'none'}; "
            "or padding same"
        )
    return AxisWorking(axis, n, k, stride, padding, padding, int(exact), formula, substituted)


def layer_arithmetic(
    width: int, height: int | None = None, *, kernel: int, stride: int = 1,
    padding: int | str = 0, depth: int = 3, filters: int = 1, dilation: int = 1, pool: bool = False,
) -> LayerArithmetic:
    """The lecture's arithmetic for one CONV (or POOL) layer.

    Raises:
        ShapeError: a non-positive size, or a fractional output size (with the fraction,
            and the nearest paddings and strides that fit).

    >>> a = layer_arithmetic(227, kernel=11, stride=4, depth=3, filters=96)
    >>> a.output_shape, a.neurons, a.params_shared, a.params_unshared
    ((55, 55, 96), 290400, 34944, 105705600)
    """
    height = width if height is None else height
    for key, value in (("W", width), ("H", height), ("F", kernel), ("S", stride), ("D", depth),
                       ("K", filters), ("dilation", dilation)):
        if value < 1:
            raise ShapeError(f"{key} must be a positive integer. Received: {key}={value}")
    if isinstance(padding, str):
        padding = padding.lower()
        if padding == "valid":
            padding = 0
        elif padding != "same":
            raise ShapeError(
                f"Unknown value for P. Allowed values are: a non-negative integer, same, valid. Received: P={padding}"
            )
    elif padding < 0:
        raise ShapeError(f"P must be a non-negative integer, same or valid. Received: P={padding}")
    w_axis = _axis("width", "W", width, kernel, stride, padding, dilation, pool)
    h_axis = _axis("height", "H", height, kernel, stride, padding, dilation, pool)
    out_depth = depth if pool else filters
    neurons = w_axis.output * h_axis.output * out_depth
    if pool:
        weights, shared, unshared, macs = 0, 0, 0, 0
    else:
        weights = kernel * kernel * depth
        shared = geometry.conv_params(kernel, kernel, depth, filters)
        unshared = geometry.local_params(h_axis.output, w_axis.output, kernel, kernel, depth, filters)
        macs = neurons * weights
    return LayerArithmetic(
        kind="pool" if pool else "conv", input_shape=(height, width, depth), kernel=kernel,
        dilation=dilation, stride=stride, padding=padding, filters=filters, width=w_axis, height=h_axis,
        output_shape=(h_axis.output, w_axis.output, out_depth), neurons=neurons,
        weights_per_filter=weights, params_shared=shared, params_unshared=unshared, macs=macs,
    )


class _SummaryModule(types.ModuleType):
    """``convcli.summary`` is both this module and the API function ``convcli.summary(model)``:
    Python binds a package attribute to its submodule once the submodule is imported, so
    the module itself answers the call."""

    def __call__(self, model: Any) -> Summary:
        from convcli.api import summary

        return summary(model)


sys.modules[__name__].__class__ = _SummaryModule
