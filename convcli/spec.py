"""Three spellings of one model: the lecture's arrow notation, TOML, Keras configs.

All three parse into :class:`convcli.layers.Model` (pure Python, no numpy, no Keras), by
looking each layer up in :data:`convcli.layers.REGISTRY`.

>>> model = parse_arrow("INPUT(32,32,1) => CONV(6,5) => TANH => AVGPOOL(2) => FC(10)")
>>> [layer.name for layer in model.layers]
['conv1', 'tanh1', 'avgpool1', 'flatten1', 'fc1']
>>> model.output_shape()
(10,)
>>> res = parse_arrow("INPUT(8,8,4) => RESIDUAL(CONV(4,3,pad=same) => RELU => CONV(4,3,pad=same))")
>>> [(layer.name, res.inbound(layer.name)) for layer in res.layers][-1]
('add1', ('input', 'conv2'))
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convcli import layers as L
from convcli.errors import ConvcliError, InputError, ModelError
from convcli.layers.merge import ElementwiseMerge

__all__ = ["KERAS_CLASSES", "TOKENS", "keras_model", "load_keras_json", "load_model", "load_toml", "parse_arrow"]

Value = Any

TOKENS = L.REGISTRY.tokens
"""Layer tokens of the arrow notation (upper case); TOML ``type`` uses the same names."""

KERAS_CLASSES = tuple(sorted(L.REGISTRY.keras))
"""Keras layer classes convcli maps onto its layers; any other class is refused."""

MAX_LAYERS = 100_000
"""Refuse repetitions that expand beyond this many layers (``[RELU] * 10**9``)."""

# Aliases accepted for parameter names (Keras spellings and the lecture's letters).
_ALIASES = {
    "k": "filters", "filters": "filters",
    "f": "kernel", "kernel": "kernel", "kernel_size": "kernel", "size": "kernel", "pool_size": "kernel",
    "s": "stride", "stride": "stride", "strides": "stride",
    "p": "pad", "pad": "pad", "padding": "pad", "crop": "pad", "cropping": "pad",
    "d": "dilation", "dilation": "dilation", "dilation_rate": "dilation",
    "activation": "activation", "function": "function",
    "bias": "bias", "use_bias": "bias",
    "units": "units", "n": "units",
    "rate": "rate",
    "alpha": "alpha", "negative_slope": "alpha",
    "epsilon": "epsilon", "eps": "epsilon",
    "height": "height", "h": "height", "width": "width", "w": "width", "depth": "depth",
    "groups": "groups", "multiplier": "multiplier", "depth_multiplier": "multiplier",
    "keepdims": "keepdims", "center": "center", "scale": "scale", "offset": "offset",
    "axis": "axis", "interpolation": "interpolation", "shape": "shape", "target_shape": "shape",
    "dims": "dims", "output_padding": "output_padding", "max_value": "max_value",
    "threshold": "threshold", "init_values": "init_values",
}


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


# --------------------------------------------------------------------------------------
# Building a graph from written layers (arrow notation and TOML)
# --------------------------------------------------------------------------------------


@dataclass
class _Item:
    """A layer as written: its token, parameters and where it was written."""

    token: str
    args: dict[str, Value]
    where: str  # "column 37" / "layers[3]"
    text: str  # the token as written, for messages
    name: str | None = None


def _bind(token: str, positional: Sequence[Value], keywords: Mapping[str, Value], where: str, text: str) -> _Item:
    """Match written arguments to the token's parameters (ModelError naming the place)."""
    cls = TOKENS[token]
    names = cls.positional_for(token)
    if len(positional) > len(names):
        raise ModelError(
            f"{where}: {text} takes at most {len(names)} positional argument(s)"
            f"{' (' + ', '.join(names) + ')' if names else ''}; received {len(positional)}"
        )
    args: dict[str, Value] = dict(zip(names, positional))
    allowed = set(names) | set(cls.keywords)
    for key, value in keywords.items():
        canonical = _ALIASES.get(key.lower())
        if canonical is None or canonical not in allowed:
            raise ModelError(
                f"{where}: {text}: unknown parameter '{key}'. Allowed: "
                f"{', '.join(names + cls.keywords) or 'none'}"
            )
        if canonical in args:
            raise ModelError(f"{where}: {text}: parameter '{canonical}' given twice")
        args[canonical] = value
    missing = [p for p in names[: cls.required] if p not in args]
    if missing:
        raise ModelError(f"{where}: {text} needs {', '.join(missing)}")
    return _Item(token, args, where, text)


def _connect(layer: L.Layer, inputs: Sequence[str]) -> L.Layer:
    """Set the layer's ``inputs`` as the parser resolved them. The layer was just built by
    the parser and is not shared yet: set in place rather than rebuilt (a model of 800
    layers was 0.2 s slower with ``dataclasses.replace``)."""
    object.__setattr__(layer, "inputs", tuple(inputs))
    return layer


class _Graph:
    """Layers being built from written items: automatic names, the implied FLATTEN before a
    dense layer on a 3-D volume (the lecture's FC), errors naming the place."""

    def __init__(self, input_shape: tuple[int, ...], explicit: set[str]):
        self.input_shape = input_shape
        self.layers: list[L.Layer] = []
        self.shapes: dict[str, tuple[int, ...] | None] = {L.INPUT_NAME: input_shape}
        self.counters: dict[str, int] = {}
        self.explicit = explicit

    def auto_name(self, prefix: str) -> str:
        while True:
            self.counters[prefix] = self.counters.get(prefix, 0) + 1
            candidate = f"{prefix}{self.counters[prefix]}"
            if candidate not in self.explicit:
                return candidate

    def _append(self, layer: L.Layer) -> str:
        if len(self.layers) >= MAX_LAYERS:
            raise ModelError(f"the model has more than {MAX_LAYERS:,} layers")
        self.layers.append(layer)
        in_shapes = [self.shapes.get(name) for name in layer.inputs]
        out: tuple[int, ...] | None = None
        if all(s is not None for s in in_shapes):
            try:
                out = layer.output_shape(*in_shapes)  # type: ignore[arg-type]
            except ConvcliError:
                out = None  # reported by the model, at the layer, when it is used
        self.shapes[layer.name] = out
        return layer.name

    def add(self, item: _Item, inputs: Sequence[str]) -> str:
        cls = TOKENS[item.token]
        if cls is L.Dense and len(inputs) == 1 and len(self.shapes.get(inputs[0]) or ()) == 3:
            inputs = [self._append(L.Flatten(name=self.auto_name("flatten"), inputs=tuple(inputs)))]
        name = item.name or self.auto_name(cls.prefix_for(item.token))
        try:
            layer = _connect(cls.from_args(name, dict(item.args), item.token), inputs)
        except ConvcliError as exc:
            raise ModelError(f"{item.where}: {item.text}: {exc}") from None
        return self._append(layer)


# --------------------------------------------------------------------------------------
# 1. The arrow notation
# --------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<arrow>=>|->|→)
      | (?P<open>\[)
      | (?P<close>\])
      | (?P<times>[*×])
      | (?P<bar>\|)
      | (?P<end>\))
      | (?P<number>\d+)
      | (?P<merge>(?i:RESIDUAL|CONCATENATE|CONCAT|ADD|MULTIPLY|MUL|SUBTRACT|AVERAGE|MAXIMUM|MINIMUM))\s*\(
      | (?P<layer>[A-Za-z_][A-Za-z0-9_]*(?:\s*\([^()]*\))?)
    )""",
    re.VERBOSE,
)

_Token = tuple[str, str, int]


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN_RE.match(text, pos)
        if match is None or match.lastgroup is None:
            col = pos + len(text[pos:]) - len(text[pos:].lstrip()) + 1
            snippet = text[col - 1 : col + 11]
            raise ModelError(
                f"column {col}: cannot read '{snippet}'; expected a layer such as CONV(64,3), '=>', "
                "'[', ']', '* N', RESIDUAL( ... ) or CONCAT( ... | ... )"
            )
        start = match.start(match.lastgroup)
        tokens.append((match.lastgroup, match.group(match.lastgroup), start + 1))
        pos = match.end()
    return tokens


def _split_args(inner: str) -> list[str]:
    """Split ``64, 3, shape=[1,1,32]`` at the commas outside brackets."""
    parts, depth, current = [], 0, ""
    for char in inner:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _parse_value(raw: str, where: str, text: str) -> Value:
    raw = raw.strip()
    if raw.startswith("[") and raw.endswith("]"):
        return tuple(_parse_value(part, where, text) for part in raw[1:-1].split(",") if part.strip())
    if re.fullmatch(r"[+-]?\d+", raw):
        return int(raw)
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        if math.isfinite(value):
            return value
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", raw):
        return raw
    raise ModelError(f"{where}: {text}: cannot read the value '{raw}'")


def _parse_layer_token(token: str, column: int) -> _Item:
    where = f"column {column}"
    match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?", token, re.DOTALL)
    assert match is not None
    word, inner = match.group(1).upper(), match.group(2)
    if word != "INPUT" and word not in TOKENS:
        known = ", ".join(["INPUT", *TOKENS, "RESIDUAL"])
        raise ModelError(f"{where}: unknown layer '{token}'; expected one of {known}")
    positional: list[Value] = []
    keywords: dict[str, Value] = {}
    if inner is not None and inner.strip():
        for part in _split_args(inner):
            if "=" in part:
                key, _, raw = part.partition("=")
                keywords[key.strip()] = _parse_value(raw, where, token)
            elif keywords:
                raise ModelError(f"{where}: {token}: positional argument after a keyword argument")
            else:
                positional.append(_parse_value(part, where, token))
    if word == "INPUT":
        if keywords or not 1 <= len(positional) <= 3:
            raise ModelError(f"{where}: {token}: expected INPUT(height, width[, depth]) or INPUT(units)")
        return _Item("INPUT", {"dims": positional}, where, token)
    return _bind(word, positional, keywords, where, token)


# The arrow notation's syntax tree: a chain of elements; an element is a layer, a repeated
# group ``[chain] * N`` or a join ``MERGE(branch | branch ...)`` whose branches are chains
# (IDENTITY alone: the join's own input).
_Chain = list["_Element"]


@dataclass
class _Repeat:
    chain: _Chain
    count: int
    column: int


@dataclass
class _Join:
    word: str
    branches: list[_Chain | None]  # None: the identity branch
    column: int


_Element = _Item | _Repeat | _Join


class _ArrowParser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def end_column(self) -> int:
        return len(self.text) + 1

    def chain(self, closers: tuple[str, ...]) -> _Chain:
        elements: _Chain = []
        while True:
            elements.append(self.element(closers))
            tok = self.peek()
            if tok is None:
                if closers:
                    what = "']' to close a repeated group" if "close" in closers else "')' to close a join"
                    raise ModelError(f"column {self.end_column()}: missing {what}")
                return elements
            kind, value, column = tok
            if kind == "arrow":
                self.pos += 1
                continue
            if kind in closers:
                return elements
            raise ModelError(f"column {column}: expected '=>' between layers, found '{value}'")

    def element(self, closers: tuple[str, ...]) -> _Element:
        tok = self.peek()
        if tok is None:
            raise ModelError(f"column {self.end_column()}: expected a layer at the end")
        kind, value, column = tok
        self.pos += 1
        if kind == "layer":
            return _parse_layer_token(value, column)
        if kind == "open":
            group = self.chain(("close",))
            self.pos += 1  # the ']'
            count = 1
            nxt = self.peek()
            if nxt is not None and nxt[0] == "times":
                self.pos += 1
                num = self.peek()
                if num is None or num[0] != "number" or int(num[1]) < 1:
                    col = num[2] if num else self.end_column()
                    raise ModelError(f"column {col}: expected a positive repeat count after '*'")
                count = int(num[1])
                self.pos += 1
            return _Repeat(group, count, column)
        if kind == "merge":
            word = re.sub(r"\s*\($", "", value).upper()
            branches: list[_Chain | None] = []
            while True:
                branch = self.chain(("bar", "end"))
                only = branch[0] if len(branch) == 1 else None
                branches.append(None if isinstance(only, _Item) and only.token == "IDENTITY" and not only.args else branch)
                tok = self.peek()
                assert tok is not None
                self.pos += 1
                if tok[0] == "end":
                    break
            if word == "RESIDUAL":
                if len(branches) != 1:
                    raise ModelError(f"column {column}: RESIDUAL takes one chain (x + f(x)); for several branches write ADD( ... | ... )")
                return _Join("ADD", [None, branches[0]], column)
            if len(branches) < 2:
                raise ModelError(f"column {column}: {word} joins two or more branches separated by '|'")
            return _Join(word, branches, column)
        raise ModelError(f"column {column}: expected a layer, found '{value}'")


def _emit(graph: _Graph, chain: _Chain, source: str) -> str:
    for element in chain:
        if isinstance(element, _Item):
            if element.token == "INPUT":
                raise ModelError(f"{element.where}: {element.text}: INPUT may only come first")
            source = graph.add(element, [source])
        elif isinstance(element, _Repeat):
            if len(graph.layers) + _size(element) > MAX_LAYERS:
                raise ModelError(f"column {element.column}: the repetition makes more than {MAX_LAYERS:,} layers")
            for _ in range(element.count):
                source = _emit(graph, element.chain, source)
        else:
            ends = [source if branch is None else _emit(graph, branch, source) for branch in element.branches]
            join = _Item(element.word, {}, f"column {element.column}", element.word)
            source = graph.add(join, ends)
    return source


def _size(element: _Element) -> int:
    """Layers an element expands to (implied flattens aside)."""
    if isinstance(element, _Repeat):
        return element.count * sum(_size(e) for e in element.chain)
    if isinstance(element, _Join):
        return 1 + sum(sum(_size(e) for e in branch) for branch in element.branches if branch)
    return 1


def _input_shape(item: _Item) -> tuple[int, ...]:
    dims = list(item.args["dims"])
    if len(dims) == 2:
        dims.append(3)  # the lecture's RGB default, as `convcli shapes --D`
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
        raise ModelError(f"{item.where}: {item.text}: sizes must be positive integers")
    return tuple(dims)


def parse_arrow(text: str, name: str = "model") -> L.Model:
    """Parse the lecture's arrow notation, e.g.
    ``INPUT(224,224,3) => [CONV(64,3,pad=1) => RELU] * 2 => POOL(2) => FC(1000) => SOFTMAX``.

    ``[ ... ] * N`` repeats (nestable); FLATTEN is implied before the first FC on a 3-D
    volume. Graphs: ``RESIDUAL(chain)`` is x + chain(x); ``ADD(a | b)``, ``CONCAT(a | b | c)``,
    ``MULTIPLY``, ``SUBTRACT``, ``AVERAGE``, ``MAXIMUM``, ``MINIMUM`` join parallel branches that
    all start from the same input (a branch ``IDENTITY`` is that input itself).

    Raises:
        ModelError: naming the token and its 1-based column.
    """
    parser = _ArrowParser(text)
    chain = parser.chain(())
    first = chain[0]
    if not isinstance(first, _Item) or first.token != "INPUT":
        where = first.where if isinstance(first, _Item) else f"column {first.column}"
        raise ModelError(f"{where}: the model must start with INPUT(height, width[, depth]) or INPUT(units)")
    graph = _Graph(_input_shape(first), set())
    _emit(graph, chain[1:], L.INPUT_NAME)
    return L.Model(input_shape=graph.input_shape, layers=tuple(graph.layers), name=name)


def _read_document(
    path: Path, language: str, parse: Callable[[str], Any], syntax_error: type[Exception]
) -> Any:
    """Read and parse a model file (InputError when it cannot be read or parsed)."""
    from convcli import fileio

    text = fileio.read_text(path, what="model file")
    try:
        return parse(text)
    except syntax_error as exc:
        raise InputError(f"{path}: not valid {language}: {exc}") from None
    except RecursionError:
        raise InputError(f"{path}: not valid {language}: nested too deeply") from None


# --------------------------------------------------------------------------------------
# 2. TOML
# --------------------------------------------------------------------------------------


def _toml_value(value: object) -> Value:
    if isinstance(value, list):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return tuple(value)
        raise ModelError(f"a list must hold numbers. Received: {value!r}")
    if isinstance(value, (int, float, str, bool)):
        return value
    raise ModelError(f"unsupported value {value!r}")


_NAME_RE = re.compile(r"[A-Za-z0-9_\-]+")


def load_toml(path: str | Path) -> L.Model:
    """Read a model from TOML: ``input = [H, W, D]``, optional ``name``, ``class_names`` and
    ``weights`` (a .npz path relative to the TOML file, kept as ``Model.weights_path``),
    and ``[[layers]]`` tables with ``type`` (a token of the arrow notation), optional ``name``,
    optional ``inputs`` (the layers feeding it; default: the layer before; ``"input"`` is the
    model's input) and the token's parameters (``filters``, ``kernel``, ``stride``, ``pad``, ...).

    Raises:
        InputError: unreadable file or invalid TOML.
        ModelError: naming the table, e.g. ``layers[3]``.
    """
    import tomllib

    path = Path(path)
    doc = _read_document(path, "TOML", tomllib.loads, tomllib.TOMLDecodeError)
    unknown = set(doc) - {"input", "layers", "name", "class_names", "weights"}
    if unknown:
        raise ModelError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
            "allowed: input, layers, name, class_names, weights"
        )
    weights = doc.get("weights")
    if weights is not None and (not isinstance(weights, str) or not weights):
        raise ModelError(f"{path}: `weights` must be a path to a .npz file. Received: weights={weights!r}")
    shape = doc.get("input")
    if not isinstance(shape, list) or len(shape) not in (1, 2, 3) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape
    ):
        raise ModelError(f"{path}: `input` must be [height, width, depth] or [units] of positive integers. Received: input={shape!r}")
    if len(shape) == 2:
        shape = [*shape, 3]
    tables = doc.get("layers")
    if not isinstance(tables, list) or not tables:
        raise ModelError(f"{path}: no [[layers]] tables")
    written: list[tuple[_Item, list[str] | None]] = []
    for index, table in enumerate(tables):
        where = f"{path.name}: layers[{index}]"
        if not isinstance(table, dict):
            raise ModelError(f"{where}: must be a table")
        table = dict(table)
        if "type" not in table:
            raise ModelError(f"{where}: missing `type` (a layer such as conv, pool, fc, relu)")
        token = str(table.pop("type")).upper()
        if token not in TOKENS:
            raise ModelError(
                f"{where}: unknown layer type '{token.lower()}'; expected one of "
                f"{', '.join(k.lower() for k in TOKENS)}"
            )
        name = table.pop("name", None)
        if name is not None and (not isinstance(name, str) or not _NAME_RE.fullmatch(name)):
            raise ModelError(f"{where}: `name` must be letters, digits, '_' or '-'. Received: name={name!r}")
        inputs = table.pop("inputs", None)
        if isinstance(inputs, str):
            inputs = [inputs]
        if inputs is not None and (
            not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs)
        ):
            raise ModelError(f"{where}: `inputs` must be a layer name or a list of them. Received: inputs={inputs!r}")
        try:
            keywords = {key: _toml_value(value) for key, value in table.items()}
        except ModelError as exc:
            raise ModelError(f"{where}: {exc}") from None
        text = f"{token.lower()}" + (f" '{name}'" if name else "")
        item = _bind(token, [], keywords, where, text)
        item.name = name
        written.append((item, inputs))
    class_names = doc.get("class_names")
    if class_names is not None and not (isinstance(class_names, list) and all(isinstance(c, str) for c in class_names)):
        raise ModelError(f"{path}: `class_names` must be a list of strings")
    graph = _Graph(tuple(shape), {item.name for item, _ in written if item.name})
    previous = L.INPUT_NAME
    for item, inputs in written:
        previous = graph.add(item, inputs or [previous])
    model = L.Model(
        input_shape=tuple(shape), layers=tuple(graph.layers), name=str(doc.get("name", path.stem)),
        class_names=tuple(class_names) if class_names is not None else None,
    )
    if weights is None:
        return model
    # a relative path is relative to the TOML file's folder, not to the working directory
    return dataclasses.replace(model, weights_path=(path.parent / weights).resolve())


# --------------------------------------------------------------------------------------
# 3. Keras configs (model.to_json(), and the config inside .keras and .h5 files)
# --------------------------------------------------------------------------------------

_MODEL_CLASSES = ("Sequential", "Functional", "Model")


def _plain(value: Any) -> Any:
    """Turn tf.keras' ``{"class_name": "__tuple__" | "TensorShape", "items": [...]}`` into lists."""
    if isinstance(value, dict):
        if value.get("class_name") in ("__tuple__", "TensorShape") and isinstance(value.get("items"), list):
            return [_plain(v) for v in value["items"]]
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _keras_shape(value: object) -> tuple[int | None, ...] | None:
    """``[null, H, W, D]`` -> ``(H, W, D)`` (None where the model leaves a size open)."""
    if not isinstance(value, list) or not value:
        return None
    dims = value[1:] if value[0] is None or len(value) in (2, 4) else value
    if len(dims) in (1, 2, 3) and all(d is None or (L.base.is_int(d) and d >= 1) for d in dims):
        return tuple(dims)
    return None


def _call_name(layer: str, node_index: Any) -> str:
    """The name of one call of a layer: its own for the first, ``name#k`` for the k-th
    further call of a shared layer."""
    return layer if not node_index else f"{layer}#{node_index}"


def _refs(node: Any) -> list[tuple[str | None, float | None]]:
    """The operands of one inbound node, in order: (layer call name, None) for a tensor and
    (None, number) for a constant. Keras 3 nodes are ``{"args": [...], "kwargs": {...}}`` with
    ``__keras_tensor__`` objects; Keras 2 nodes are lists of ``[layer, node, tensor, kwargs]``."""
    found: list[tuple[str | None, float | None]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                history = (value.get("config") or {}).get("keras_history") or []
                if history:
                    found.append((_call_name(str(history[0]), history[1] if len(history) > 1 else 0), None))
            return
        if isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append((None, float(value)))

    if isinstance(node, dict):
        walk(node.get("args", []))
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, list) and item and isinstance(item[0], str):
                found.append((_call_name(item[0], item[1] if len(item) > 1 else 0), None))
    return found


class _KerasReader:
    """Flatten a Keras model config (nested Sequential/Functional models included) into
    convcli layers, collecting every unsupported class or option before refusing."""

    def __init__(self, source: str, tuples: bool = True):
        self.source = source
        self.plain: Callable[[Any], Any] = _plain if tuples else (lambda value: value)
        self.layers: list[L.Layer] = []
        self.alias: dict[str, str] = {}
        self.problems: dict[str, list[str]] = {}
        self.input_name: str | None = None
        self.input_shape: tuple[int | None, ...] | None = None

    def problem(self, detail: str, layer: str) -> None:
        self.problems.setdefault(detail, []).append(layer)

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def set_input(self, name: str, shape: tuple[int | None, ...] | None) -> None:
        if self.input_name is None:
            self.input_name, self.input_shape = name, shape
        elif self.resolve(name) != self.input_name:
            self.problem("models with several inputs", name)

    def model(self, doc: Mapping[str, Any], feeds: list[str] | None) -> str | None:
        """Read a (nested) model; ``feeds`` are the names feeding it (None: the top level).
        Returns the name of the layer giving its output."""
        cls = doc.get("class_name")
        config = doc.get("config")
        if cls == "Sequential":
            return self.sequential(doc, config, feeds)
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ModelError(f"{self.source}: model class {cls} has no \"layers\" list")
        return self.functional(config, feeds)

    def sequential(self, doc: Mapping[str, Any], config: Any, feeds: list[str] | None) -> str | None:
        entries = config if isinstance(config, list) else (config or {}).get("layers")
        if not isinstance(entries, list):
            raise ModelError(f"{self.source}: Sequential config has no \"layers\" list")
        previous: str | None = feeds[0] if feeds else None
        if feeds is None and isinstance(config, dict):
            shape = _keras_shape(self.plain(config.get("build_input_shape")))
            if shape is None and isinstance(doc.get("build_config"), dict):
                shape = _keras_shape(doc["build_config"].get("input_shape"))
            if shape is not None:
                previous = L.INPUT_NAME
                self.set_input(previous, shape)
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or "class_name" not in entry:
                raise ModelError(f"{self.source}: layers[{index}] is not a Keras layer object")
            cfg = self.plain(entry.get("config") or {})
            name = str(cfg.get("name") or entry.get("name") or f"layer_{index}")
            if previous is None:  # the first layer of a top-level Sequential carries the input shape
                for key in ("batch_input_shape", "batch_shape"):
                    if key in cfg:
                        shape = _keras_shape(cfg[key])
                        if shape is None:
                            raise ModelError(f"{self.source}: layer '{name}': {key}={cfg[key]!r} is not (None, H, W, D) or (None, units)")
                        previous = name if entry["class_name"] == "InputLayer" else L.INPUT_NAME
                        self.set_input(previous, shape)
                if previous is None and isinstance(entry.get("build_config"), dict):
                    shape = _keras_shape(entry["build_config"].get("input_shape"))
                    if shape is not None:
                        previous = L.INPUT_NAME
                        self.set_input(previous, shape)
                if previous is None:
                    raise ModelError(
                        f"{self.source}: no input shape (no InputLayer, batch_input_shape, batch_shape or "
                        "build_config); build the model before model.to_json()"
                    )
                if entry["class_name"] == "InputLayer":
                    continue
            if entry["class_name"] == "InputLayer":
                self.alias[name] = previous
                continue
            previous = self.layer(entry, name, [(previous, None)])
        return previous

    def functional(self, config: Mapping[str, Any], feeds: list[str] | None) -> str | None:
        inputs = _endpoints(self.plain(config.get("input_layers")))
        for position, name in enumerate(inputs):
            if feeds is not None and position < len(feeds):
                self.alias[name] = feeds[position]
        for index, entry in enumerate(config["layers"]):
            if not isinstance(entry, dict) or "class_name" not in entry:
                raise ModelError(f"{self.source}: layers[{index}] is not a Keras layer object")
            cfg = self.plain(entry.get("config") or {})
            name = str(entry.get("name") or cfg.get("name") or f"layer_{index}")
            nodes = entry.get("inbound_nodes") or []
            if entry["class_name"] == "InputLayer":
                if feeds is None:
                    shape = None
                    for key in ("batch_shape", "batch_input_shape"):
                        if key in cfg:
                            shape = _keras_shape(cfg[key])
                    if shape is None:
                        raise ModelError(f"{self.source}: input layer '{name}' has no readable batch_shape")
                    self.set_input(name, shape)
                continue
            if len(nodes) > 1 and entry["class_name"] in _MODEL_CLASSES:
                self.problem("nested models called more than once", name)
                continue
            for call, node in enumerate(nodes or [None]):
                self.layer(entry, _call_name(name, call), _refs(node) if node is not None else [],
                           shares=name if call else None)
        outputs = _endpoints(self.plain(config.get("output_layers")))
        if len(outputs) > 1:
            self.problem("models with several outputs", ", ".join(outputs))
        return self.resolve(outputs[0]) if outputs else (self.layers[-1].name if self.layers else None)

    def layer(self, entry: Mapping[str, Any], name: str, refs: list[tuple[str | None, float | None]],
              shares: str | None = None) -> str:
        keras_class = str(entry["class_name"])
        tensors = [self.resolve(ref) for ref, _ in refs if ref is not None]
        if keras_class in _MODEL_CLASSES:
            output = self.model(self.plain(entry), tensors)
            if output is not None:
                self.alias[name] = output
            return name
        cls = L.REGISTRY.keras.get(keras_class)
        module = str(entry.get("module") or "")
        if cls is None:
            kind = "operation" if module.startswith("keras.src.ops") else "class"
            self.problem(f"{kind} {keras_class}", name)
            return name
        cfg = self.plain(entry.get("config") or {})
        constants = [(i, value) for i, (ref, value) in enumerate(refs) if ref is None]
        try:
            if not isinstance(cfg, dict):
                raise ModelError("the config is not an object")
            layer = cls.from_keras(name, cfg, keras_class)
            if constants:
                if not isinstance(layer, ElementwiseMerge) or len(constants) > 1:
                    raise L.Unsupported(f"{keras_class} with constant operands")
                layer = dataclasses.replace(layer, constant=constants[0][1], constant_index=constants[0][0])  # type: ignore[call-arg]
            _connect(layer, tensors)
            if shares is not None:
                object.__setattr__(layer, "shares", shares)
        except L.Unsupported as exc:
            self.problem(f"{keras_class} {exc}", name)
            return name
        except (ConvcliError, KeyError, TypeError, ValueError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ModelError(f"{self.source}: layer '{name}' ({keras_class}): {detail}") from None
        self.layers.append(layer)
        return name

    def refusal(self) -> ModelError:
        parts = []
        for detail, names in self.problems.items():
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            parts.append(f"{detail} (layer{'s' if len(names) > 1 else ''} {shown})")
        return ModelError(f"{self.source}: not supported: " + "; ".join(parts))


def _endpoints(value: Any) -> list[str]:
    """Layer names of ``input_layers`` / ``output_layers``: ``[name, 0, 0]`` or a list of them."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        return [value[0]]
    if isinstance(value, list):
        return [str(v[0]) for v in value if isinstance(v, list) and v]
    if isinstance(value, dict):  # a dict of named inputs
        return [str(v[0]) for v in value.values() if isinstance(v, list) and v]
    return []


def _unwrap(doc: Any, source: str) -> dict[str, Any]:
    """Unwrap the dialects: tfjs ``modelTopology``, h5-style ``model_config``."""
    if isinstance(doc, dict) and "modelTopology" in doc:  # TensorFlow.js model.json
        doc = doc["modelTopology"]
    if isinstance(doc, dict) and "model_config" in doc:  # tfjs / h5 attribute
        doc = doc["model_config"]
    if not isinstance(doc, dict) or "class_name" not in doc or "config" not in doc:
        raise ModelError(f"{source}: not a Keras model JSON (expected \"class_name\" and \"config\")")
    if doc["class_name"] not in _MODEL_CLASSES:
        raise ModelError(
            f"{source}: model class {doc['class_name']} is not supported; supported: {', '.join(_MODEL_CLASSES)}"
        )
    return doc


def keras_model(doc: Any, source: str, input_shape: tuple[int, ...] | None = None, *,
                tuples: bool = True) -> L.Model:
    """A model from a Keras model config (the dict of ``model.to_json()``), without Keras.

    Sequential and Functional models (any DAG; nested models are flattened, their layers
    keeping their names). Sizes floor as Keras does. ``input_shape`` fills sizes the
    model leaves open (None). ``tuples=False`` says the document holds no tf.keras tuple
    objects (``{"class_name": "__tuple__", ...}``), so configs are used as they are.

    Raises:
        ModelError: every unsupported class or option at once, naming the layers.
    """
    doc = _unwrap(doc, source)
    reader = _KerasReader(source, tuples)
    output = reader.model(doc, None)
    if reader.problems:
        raise reader.refusal()
    if reader.input_name is None or reader.input_shape is None:
        raise ModelError(f"{source}: the model has no input layer with a shape")
    shape = reader.input_shape
    if input_shape is not None:
        if len(input_shape) != len(shape) or any(d is not None and d != g for d, g in zip(shape, input_shape)):
            raise ModelError(
                f"{source}: --input-shape {L.shape_text(input_shape)} does not match the model's input "
                f"{L.shape_text(tuple('None' if d is None else d for d in shape))}"  # type: ignore[misc]
            )
        shape = input_shape
    if any(d is None for d in shape):
        shown = "x".join("None" if d is None else str(d) for d in shape)
        raise ModelError(f"{source}: the model leaves its input size open ({shown}); give it with --input-shape H,W,D")
    return L.Model(
        input_shape=tuple(int(d) for d in shape if d is not None), layers=tuple(reader.layers),
        name=str((doc.get("config") or {}).get("name", "model")) if isinstance(doc.get("config"), dict) else "sequential",
        input_name=reader.input_name, output=output if output != reader.input_name else None,
        keras_config=doc,
    )


def load_keras_json(path: str | Path, input_shape: tuple[int, ...] | None = None) -> L.Model:
    """Read a Keras ``model.to_json()`` file (Keras 2.0, 2.x, 3, or a TensorFlow.js
    ``model.json``) without Keras. Supported layer classes: :data:`KERAS_CLASSES`.

    Raises:
        InputError: unreadable file or invalid JSON.
        ModelError: naming the Keras layers and their classes.
    """
    path = Path(path)
    text: list[str] = []

    def parse(data: str) -> Any:
        text.append(data)
        return json.loads(data)

    doc = _read_document(path, "JSON", parse, json.JSONDecodeError)
    tuples = any(marker in text[0] for marker in ("__tuple__", "TensorShape"))
    return keras_model(doc, path.name, input_shape, tuples=tuples)


# --------------------------------------------------------------------------------------


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"224,224,3"`` (or ``224x224x3``) as a shape, for ``--input-shape``.

    >>> parse_input_shape("299x299x3")
    (299, 299, 3)
    """
    parts = [p.strip() for p in re.split(r"[,x×]", text.strip())]
    if len(parts) in (1, 3) and all(re.fullmatch(r"[0-9]{1,6}", p) for p in parts) and all(int(p) >= 1 for p in parts):
        return tuple(int(p) for p in parts)
    raise InputError(f"--input-shape must be H,W,D (or units) of positive integers. Received: {text!r}")


def load_model(source: str, input_shape: tuple[int, ...] | None = None) -> L.Model:
    """A model from a ``.toml`` file, a Keras ``.json``, ``.keras`` or ``.h5`` file, or the
    arrow notation.

    A source ending in one of those extensions is read as a file (InputError when it does
    not exist); anything else is parsed as the arrow notation. ``input_shape`` fills the
    sizes a Keras model leaves open.
    """
    lowered = source.lower().strip()
    if lowered.endswith((".toml", ".json", ".keras", ".h5", ".hdf5")):
        path = Path(source)
        if not _is_file(path):
            if _is_folder(path):
                raise InputError(f"model file {source} is a folder, expected a .toml, Keras .json, .keras or .h5 file")
            raise InputError(f"model file {source} does not exist")
        if lowered.endswith(".toml"):
            return load_toml(path)
        if lowered.endswith(".json"):
            return load_keras_json(path, input_shape)
        from convcli.keras_files import read_keras_model

        keras_file = read_keras_model(path)
        model = keras_model(keras_file.config, path.name, input_shape)
        # the file's own weights are the default weights (``--weights`` overrides them)
        return dataclasses.replace(model, weights_path=path.resolve()) if keras_file.weights is not None else model
    if "(" not in source and _is_file(Path(source)):
        raise InputError(f"model file {source}: expected a .toml, a Keras .json, .keras or .h5 file")
    return parse_arrow(source)


def _is_folder(path: Path) -> bool:
    """``path.is_dir()``, False where the system refuses the name."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False where the system refuses the name (longer than a file name
    may be, as a long arrow notation is)."""
    try:
        return path.is_file()
    except OSError:
        return False
