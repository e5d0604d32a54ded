"""Models as graphs: the arrow notation's RESIDUAL and joins, TOML ``inputs``, the graph's
checks, the forward pass over a DAG, ``summary --dot`` and ``--input-shape``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convcli import forward, spec
from convcli import layers as L
from convcli.errors import ModelError, ShapeError
from convcli.summary import summarize

from .oracles import conv2d_naive

# ---- arrow notation -------------------------------------------------------------------


def test_residual_block_is_x_plus_f_of_x() -> None:
    model = spec.parse_arrow("INPUT(8,8,4) => RESIDUAL(CONV(4,3,pad=same) => RELU => CONV(4,3,pad=same)) => RELU")
    assert [(layer.name, model.inbound(layer.name)) for layer in model.layers] == [
        ("conv1", ("input",)), ("relu1", ("conv1",)), ("conv2", ("relu1",)),
        ("add1", ("input", "conv2")), ("relu2", ("add1",)),
    ]
    assert model.output_shape() == (8, 8, 4)
    # two 3x3x4x4 convolutions with biases; the join has no parameters
    assert model.count_params() == 2 * (3 * 3 * 4 * 4 + 4)


def test_inception_style_concat_of_branches() -> None:
    text = ("INPUT(28,28,192) => CONCAT(CONV(64,1) | CONV(96,1) => CONV(128,3,pad=same) "
            "| CONV(16,1) => CONV(32,5,pad=same) | MAXPOOL(3,stride=1,pad=same) => CONV(32,1))")
    model = spec.parse_arrow(text)
    # GoogLeNet's inception (3a): 64 + 128 + 32 + 32 = 256 channels, 28x28 (Szegedy et al. 2014, Table 1)
    assert model.output_shape() == (28, 28, 256)
    concat = model.layers[-1]
    assert isinstance(concat, L.Concatenate)
    assert model.inbound(concat.name) == ("conv1", "conv3", "conv5", "conv6")
    # Table 1 of the paper: 159K parameters for inception (3a) (biases excluded there)
    weights = 192 * 64 + 192 * 96 + 9 * 96 * 128 + 192 * 16 + 25 * 16 * 32 + 192 * 32
    assert weights == 163_328  # = 159.5 K in the paper's 1024-based K
    assert model.count_params() == weights + 64 + 96 + 128 + 16 + 32 + 32


def test_identity_branch_nested_joins_and_repeats() -> None:
    model = spec.parse_arrow(
        "INPUT(6,6,2) => [RESIDUAL(CONV(2,3,pad=same) => ADD(RELU | IDENTITY))] * 2 => MAXIMUM(TANH | SIGMOID)"
    )
    names = [layer.name for layer in model.layers]
    assert names == ["conv1", "relu1", "add1", "add2", "conv2", "relu2", "add3", "add4", "tanh1", "sigmoid1", "maximum1"]
    assert model.inbound("add1") == ("relu1", "conv1")
    assert model.inbound("add2") == ("input", "add1")
    assert model.inbound("add4") == ("add2", "add3")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("INPUT(8,8,3) => RESIDUAL(CONV(4,3,pad=same))", r"layer 'add1' \(Add\) cannot merge incompatible shapes 8x8x3, 8x8x4"),
        ("INPUT(8,8,3) => CONCAT(CONV(4,3) | CONV(4,1))", r"cannot join shapes 6x6x4, 8x8x4 along axis -1"),
    ],
)
def test_incompatible_joins_name_the_layer_and_both_shapes(text: str, message: str) -> None:
    with pytest.raises(ShapeError, match=message):
        summarize(spec.parse_arrow(text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("INPUT(8,8,3) => CONCAT(CONV(4,1))", "column 17: CONCAT joins two or more branches"),
        ("INPUT(8,8,3) => RESIDUAL(RELU | TANH)", "column 17: RESIDUAL takes one chain"),
        ("INPUT(8,8,3) => ADD(RELU | TANH", "missing '\\)' to close a join"),
        ("INPUT(8,8,3) => ADD(RELU | )", "expected a layer, found '\\)'"),
    ],
)
def test_arrow_join_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        spec.parse_arrow(text)


# ---- TOML and the graph's own checks ----------------------------------------------------


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "model.toml"
    path.write_text(text)
    return path


def test_toml_inputs_make_a_residual_graph(tmp_path: Path) -> None:
    path = _toml(tmp_path, """
input = [16, 16, 8]
[[layers]]
type = "conv"
name = "a"
filters = 8
kernel = 3
pad = "same"
[[layers]]
type = "bn"
[[layers]]
type = "add"
name = "skip"
inputs = ["input", "bn1"]
[[layers]]
type = "relu"
""")
    model = spec.load_toml(path)
    assert model.inbound("skip") == ("input", "bn1")
    assert model.inbound("relu1") == ("skip",)
    assert model.count_params() == 3 * 3 * 8 * 8 + 8 + 4 * 8


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ('[[layers]]\ntype = "relu"\ninputs = ["nowhere"]\n', "takes its input from 'nowhere', which is not a layer"),
        ('[[layers]]\ntype = "relu"\nname = "a"\ninputs = ["b"]\n[[layers]]\ntype = "relu"\nname = "b"\ninputs = ["a"]\n',
         "the layers a, b feed each other in a cycle"),
        ('[[layers]]\ntype = "relu"\ninputs = ["input", "input"]\n', r"takes 1 input\(s\); it is given 2"),
        ('[[layers]]\ntype = "add"\n', r"needs at least two inputs"),
        ('[[layers]]\ntype = "relu"\ninputs = 3\n', "`inputs` must be a layer name or a list"),
    ],
)
def test_graph_errors(tmp_path: Path, layers: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        summarize(spec.load_toml(_toml(tmp_path, "input = [4, 4, 2]\n" + layers)))


def test_layers_written_out_of_order_are_sorted(tmp_path: Path) -> None:
    path = _toml(tmp_path, """
input = [4, 4, 2]
[[layers]]
type = "add"
name = "join"
inputs = ["left", "right"]
[[layers]]
type = "relu"
name = "left"
inputs = "input"
[[layers]]
type = "tanh"
name = "right"
inputs = "input"
""")
    model = spec.load_toml(path)
    assert [layer.name for layer in model.layers] == ["left", "right", "join"]
    assert model.output_name == "join"


# ---- forward pass over a graph ------------------------------------------------------------


def test_forward_residual_and_concat_against_the_oracle() -> None:
    model = spec.parse_arrow(
        "INPUT(7,7,3) => RESIDUAL(CONV(3,3,pad=same) => RELU) => CONCAT(CONV(2,1) | IDENTITY)"
    )
    params = forward.init_params(model, seed=3)
    x = np.random.default_rng(11).standard_normal((2, 7, 7, 3)).astype(np.float32)
    out = forward.run(model, x, params)
    xd = x.astype(np.float64)
    branch = np.maximum(conv2d_naive(xd, params["conv1.kernel"], params["conv1.bias"], pads=(1, 1, 1, 1)), 0)
    res = xd + branch
    side = conv2d_naive(res, params["conv2.kernel"], params["conv2.bias"])
    expected = np.concatenate([side, res], axis=-1)
    assert out.shape == (2, 7, 7, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # the per-layer path (statistics, no fusion) gives the same numbers
    seen: list[str] = []
    again = forward.run(model, x, params, on_layer=lambda layer, y, s: seen.append(layer.name))
    np.testing.assert_allclose(again, out, rtol=1e-6, atol=1e-6)
    assert seen == [layer.name for layer in model.layers]


def test_the_input_array_is_never_overwritten() -> None:
    model = spec.parse_arrow("INPUT(4,4,2) => ADD(RELU | TANH) => RELU")
    x = np.linspace(-2, 2, 32, dtype=np.float32).reshape(1, 4, 4, 2)
    before = x.copy()
    out = forward.run(model, x, forward.init_params(model))
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(out, np.maximum(np.maximum(before, 0) + np.tanh(before), 0), rtol=1e-6)


# ---- CLI: --dot and --input-shape ------------------------------------------------------------


def test_summary_dot_draws_every_edge(cli) -> None:
    result = cli("summary", "INPUT(8,8,3) => RESIDUAL(CONV(3,3,pad=same) => RELU)", "--dot")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == 'digraph "model" {' and lines[-1] == "}"
    edges = sorted(line.strip() for line in lines if "->" in line)
    assert edges == ['"conv1" -> "relu1";', '"input" -> "add1";', '"input" -> "conv1";', '"relu1" -> "add1";']
    assert any(line.strip().startswith('"add1" [') and "filled" in line for line in lines)


def _open_input_model(tmp_path: Path) -> Path:
    doc = {
        "class_name": "Functional",
        "config": {
            "name": "open", "layers": [
                {"class_name": "InputLayer", "name": "in", "config": {"name": "in", "batch_shape": [None, None, None, 3]},
                 "inbound_nodes": []},
                {"class_name": "Conv2D", "name": "c", "config": {"name": "c", "filters": 4, "kernel_size": [3, 3],
                 "strides": [2, 2], "padding": "valid"},
                 "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__", "config": {"keras_history": ["in", 0, 0]}}],
                                    "kwargs": {}}]},
            ],
            "input_layers": [["in", 0, 0]], "output_layers": [["c", 0, 0]],
        },
    }
    path = tmp_path / "open.json"
    path.write_text(json.dumps(doc))
    return path


def test_input_shape_fills_an_open_keras_input(cli, tmp_path: Path) -> None:
    path = _open_input_model(tmp_path)
    refused = cli("summary", str(path))
    assert refused.exit_code == 2
    assert "leaves its input size open (NonexNonex3); give it with --input-shape H,W,D" in refused.stderr
    result = cli("summary", str(path), "--input-shape", "10,10,3", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    # Keras floors: (10 - 3) / 2 + 1 = 4.5 -> 4, the last row and column are never read
    assert doc["layers"][0]["output_shape"] == [4, 4, 4]
    assert doc["layers"][0]["note"] == "windows never reach the last 1 row and 1 column"
    mismatch = cli("summary", str(path), "--input-shape", "10,10,1")
    assert mismatch.exit_code == 2 and "does not match the model's input" in mismatch.stderr


@pytest.mark.parametrize(
    "layer",
    ["CONV(6,3,pad=same)", "CONV(6,3,pad=same,groups=2,bias=false)", "DWCONV(3,multiplier=2,pad=same)",
     "SEPCONV(5,3,multiplier=2,pad=same)", "DECONV(4,3,stride=2)", "LOCAL(3,3)", "FC(4)"],
)
def test_batch_norm_folded_into_the_layer_before_it(layer: str) -> None:
    """The fused pass folds BN (with moving statistics far from 0 and 1) into the weights of
    the layer before it and applies the activation after it; the per-layer pass computes each
    layer on its own. Both must agree."""
    model = spec.parse_arrow(f"INPUT(9,9,4) => {layer} => BN(epsilon=0.01) => SIGMOID")
    params = forward.init_params(model, seed=5)
    rng = np.random.default_rng(6)
    bn = model.layers[-2].name
    for key in ("gamma", "beta", "moving_mean"):
        params[f"{bn}.{key}"] = rng.normal(size=params[f"{bn}.{key}"].shape).astype(np.float32)
    params[f"{bn}.moving_variance"] = rng.uniform(0.1, 3.0, params[f"{bn}.moving_variance"].shape).astype(np.float32)
    x = rng.standard_normal((3, 9, 9, 4)).astype(np.float32)
    fused = forward.run(model, x, params)
    steps: list[str] = []
    separate = forward.run(model, x, params, on_layer=lambda lyr, y, s: steps.append(lyr.type))
    assert steps[-2:] == ["BatchNormalization", "Activation"]
    np.testing.assert_allclose(fused, separate, rtol=1e-5, atol=1e-6)


def test_summary_table_shows_connections_for_graphs_only(cli) -> None:
    graph = cli("summary", "INPUT(8,8,3) => RESIDUAL(CONV(3,3,pad=same) => RELU)")
    assert graph.exit_code == 0
    header = graph.stdout.splitlines()[1]
    assert header.split()[-2:] == ["Connected", "to"]
    add_row = next(line for line in graph.stdout.splitlines() if line.startswith("add1 "))
    assert add_row.rstrip().endswith("input, relu1")
    chain = cli("summary", "INPUT(8,8,3) => CONV(3,3,pad=same) => RELU")
    assert "Connected to" not in chain.stdout


def test_a_model_too_big_for_memory_is_refused_before_allocating(cli, tmp_path: Path) -> None:
    """100,000 inputs by 1,000,000 units: 10^11 float32 weights, 373 GiB. The refusal comes
    from the arithmetic, at once, and says how much it would need."""
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 100_000), np.float32))
    result = cli("run", "INPUT(100000) => FC(1000000)", str(x))
    assert result.exit_code == 2
    assert "the model needs 372.5 GiB for its parameters and one batch of activations" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args", [("run", "INPUT(4,4,1) => RELU", "x\x00.npy"), ("filter", "samples/camera.png", "-k", "box3", "-o", "o\x00.png")]
)
def test_a_nul_byte_in_a_file_name_is_one_line(cli, args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    assert result.stderr == "error: a file name contains a NUL byte\n"
