"""The three model spellings: arrow notation, TOML and Keras ``to_json()`` files."""

from __future__ import annotations

import copy
import doctest
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convcli import layers as L
from convcli import spec
from convcli.errors import InputError, ModelError, ShapeError

# The lecture's VGGNet pattern with the sizes filled in (VGG16, configuration D)
VGG16_ARROW = (
    "INPUT(224,224,3) => [CONV(64,3,pad=1) => RELU] * 2 => POOL(2) => "
    "[CONV(128,3,pad=1) => RELU] * 2 => POOL(2) => [CONV(256,3,pad=1) => RELU] * 3 => POOL(2) => "
    "[CONV(512,3,pad=1) => RELU] * 3 => POOL(2) => [CONV(512,3,pad=1) => RELU] * 3 => POOL(2) => "
    "[FC(4096) => RELU => DO(0.5)] * 2 => FC(1000) => SOFTMAX"
)

# Published totals (Keras' model.summary() of the same architectures)
TOTALS = {"lenet5": 61_706, "alexnet": 62_378_344, "vgg16": 138_357_544, "vgg19": 143_667_240}


def test_doctests() -> None:
    failures, tried = doctest.testmod(spec)
    assert tried >= 3 and failures == 0


# ---- arrow notation ------------------------------------------------------------------


def test_lecture_vgg_pattern_parses_to_vgg16() -> None:
    model = spec.parse_arrow(VGG16_ARROW)
    assert model.input_shape == (224, 224, 3)
    types = [layer.type for layer in model.layers]
    assert types.count("Conv2D") == 13 and types.count("MaxPooling2D") == 5
    assert types.count("Dense") == 3 and types.count("Dropout") == 2
    assert types[types.index("Dense") - 1] == "Flatten"  # implied before the first FC
    assert model.count_params() == TOTALS["vgg16"]


def test_spec_example_parses() -> None:
    model = spec.parse_arrow(
        "INPUT(227,227,3) => CONV(96,11,stride=4) => RELU => POOL(3,stride=2) => "
        "[CONV(256,5,pad=2) => RELU] * 2 => FC(10) => SOFTMAX"
    )
    shapes = [out for _, _, out in model.shapes()]
    # 227 -> 55 (lecture) -> pool (55-3)/2+1 = 27 -> 27 -> 27 -> 27*27*256 -> 10
    assert shapes == [(55, 55, 96), (55, 55, 96), (27, 27, 96), (27, 27, 256), (27, 27, 256),
                      (27, 27, 256), (27, 27, 256), (186_624,), (10,), (10,)]
    assert [layer.name for layer in model.layers] == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "conv3", "relu3", "flatten1", "fc1", "softmax1",
    ]


def test_nested_repetition_and_case() -> None:
    model = spec.parse_arrow("input(32,32,3) -> [[conv(8,3,pad=same) -> relu] * 2 -> maxpool(2)] * 3 -> gap")
    types = [layer.type for layer in model.layers]
    assert types == (["Conv2D", "Activation"] * 2 + ["MaxPooling2D"]) * 3 + ["GlobalAveragePooling2D"]
    assert model.output_shape() == (8,)
    assert model.shapes()[-2][2] == (4, 4, 8)  # 32 -> 16 -> 8 -> 4


def test_every_token() -> None:
    model = spec.parse_arrow(
        "INPUT(28,28,1) => ZEROPAD(2) => CONV(4,3,stride=1,pad=valid,dilation=2,activation=relu) => "
        "LOCAL(2,4,stride=2) => BN => LRELU(0.1) => ELU => AVGPOOL(2,stride=1) => TANH => SIGMOID => "
        "DROPOUT(0.25) => FLATTEN => DENSE(5) => LEAKYRELU => DO => FC(3, activation=softmax)"
    )
    by_type = {layer.type: layer for layer in model.layers}
    conv = by_type["Conv2D"]
    assert isinstance(conv, L.Conv2D) and conv.dilation == (2, 2) and conv.activation == "relu"
    assert model.shapes()[0][2] == (32, 32, 1)  # zero padding 2 on every side
    assert model.shapes()[1][2] == (28, 28, 4)  # (32 - 5)/1 + 1
    assert model.shapes()[2][2] == (13, 13, 2)  # (28 - 4)/2 + 1
    alphas = [layer.alpha for layer in model.layers if isinstance(layer, L.Activation)]
    assert alphas == [0.1, 1.0, None, None, 0.3]
    assert [layer.rate for layer in model.layers if isinstance(layer, L.Dropout)] == [0.25, 0.5]
    assert [layer.type for layer in model.layers].count("Flatten") == 1  # written, not implied twice


def test_input_defaults_and_flat_input() -> None:
    assert spec.parse_arrow("INPUT(8,8) => CONV(1,3)").input_shape == (8, 8, 3)
    mlp = spec.parse_arrow("INPUT(15) => FC(10) => RELU")  # the lecture's Dense(10, input_dim=15)
    assert mlp.count_params() == 160
    assert [layer.type for layer in mlp.layers] == ["Dense", "Activation"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("INPUT(224,224,3) => [CONV(64,3,pad=1) => RELU] * 2 => CONVV(64,3)",
         r"^column 55: unknown layer 'CONVV\(64,3\)'; expected one of INPUT, CONV"),
        ("CONV(8,3) => RELU", r"^column 1: the model must start with INPUT"),
        ("INPUT(8,8,3) => CONV(8)", r"^column 17: CONV\(8\) needs kernel"),
        ("INPUT(8,8,3) => CONV(8,3,4)", r"^column 17: CONV\(8,3,4\) takes at most 2 positional"),
        ("INPUT(8,8,3) => CONV(8,3,strid=2)", r"^column 17: .*unknown parameter 'strid'"),
        ("INPUT(8,8,3) => CONV(8,3,pad=full)", r"^column 17: .*Received: pad=full"),
        ("INPUT(8,8,3) => [CONV(8,3) => RELU", r"^column 35: missing '\]'"),
        ("INPUT(8,8,3) => [RELU] * 0", r"^column 26: expected a positive repeat count"),
        ("INPUT(8,8,3) => RELU RELU", r"^column 22: expected '=>' between layers"),
        ("INPUT(8,8,3) => RELU =>", r"^column 24: expected a layer at the end"),
        ("INPUT(8,8,3) => INPUT(8,8,3)", r"^column 17: INPUT\(8,8,3\): INPUT may only come first"),
        ("INPUT(8,8,3) => FC(0)", r"^column 17: FC\(0\): .*`units` must be a positive integer"),
        ("INPUT(8,8,3) => DO(1.5)", r"^column 17: DO\(1.5\): .*rate"),
        ("INPUT(8,8,3) => CONV(2,3 => RELU", r"^column 21: cannot read"),
    ],
)
def test_arrow_errors_name_the_column(text: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        spec.parse_arrow(text)


def test_unknown_token_column_is_where_it_starts() -> None:
    text = "INPUT(224,224,3) => [CONV(64,3,pad=1) => RELU] * 2 => CONVV(64,3)"
    with pytest.raises(ModelError) as info:
        spec.parse_arrow(text)
    column = int(str(info.value).split(":")[0].split()[1])
    assert text[column - 1 :].startswith("CONVV")


def test_layer_that_does_not_fit_is_named() -> None:
    model = spec.parse_arrow("INPUT(10,10,3) => CONV(2,3,stride=2)")  # the lecture's 4.5
    with pytest.raises(ShapeError, match=r"layer 'conv1' \(Conv2D\).*= 4\.5 is not an integer"):
        model.shapes()


# ---- TOML ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TOTALS))
def test_toml_samples_give_published_totals(samples: Path, name: str) -> None:
    model = spec.load_toml(samples / f"{name}.toml")
    assert model.count_params() == TOTALS[name]
    assert model.name == name


def test_toml_lenet_per_layer_and_class_names(samples: Path) -> None:
    model = spec.load_model(str(samples / "lenet5.toml"))
    weighted = [layer.params(shape) for layer, shape, _ in model.shapes() if layer.params(shape)]
    assert weighted == [156, 2_416, 48_120, 10_164, 850]
    assert model.class_names == tuple(str(i) for i in range(10))
    assert [layer.name for layer in model.layers][:2] == ["c1", "s2"]


def _write(tmp_path: Path, text: str, name: str = "model.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_toml_auto_names_and_implied_flatten(tmp_path: Path) -> None:
    path = _write(tmp_path, 'input = [8, 8, 1]\n[[layers]]\ntype = "conv"\nfilters = 2\nkernel = 3\n'
                            '[[layers]]\ntype = "fc"\nunits = 4\n')
    model = spec.load_toml(path)
    assert [layer.name for layer in model.layers] == ["conv1", "flatten1", "fc1"]
    assert model.count_params() == 20 + (6 * 6 * 2 * 4 + 4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('input = [8, 8, 1]\n[[layers]]\ntype = "relu"\n[[layers]]\ntype = "conv"\nfilters = 2\n',
         r"model\.toml: layers\[1\]: conv needs kernel"),
        ('input = [8, 8, 1]\n[[layers]]\ntype = "relu"\n[[layers]]\ntype = "convv"\n',
         r"layers\[1\]: unknown layer type 'convv'; expected one of conv, dwconv"),
        ('input = [8, 8, 1]\n[[layers]]\ntype = "conv"\nfilters = 2\nkernel = 3\nstrid = 2\n',
         r"layers\[0\]: conv: unknown parameter 'strid'"),
        ('input = [8, 8, 1]\n[[layers]]\ntype = "conv"\nname = "a"\nfilters = 2\nkernel = 3\n'
         '[[layers]]\ntype = "relu"\nname = "a"\n', "two layers are named 'a'"),
        ('input = [8, 0, 1]\n[[layers]]\ntype = "relu"\n', r"`input` must be \[height, width, depth\]"),
        ('[[layers]]\ntype = "relu"\n', r"`input` must be"),
        ('input = [8, 8, 1]\n', r"no \[\[layers\]\] tables"),
        ('input = [8, 8, 1]\nlayer = 3\n', "unknown top-level key"),
    ],
)
def test_toml_errors_name_the_table(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        spec.load_toml(_write(tmp_path, text))


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not valid TOML"):
        spec.load_toml(_write(tmp_path, "input = [8, 8\n"))
    with pytest.raises(InputError, match="does not exist"):
        spec.load_model(str(tmp_path / "missing.toml"))


# ---- Keras JSON ----------------------------------------------------------------------

KERAS_SAMPLES = {
    "lenet5_keras2.0.json": "lenet5",  # Keras 2.0: config is the list of layers
    "alexnet_keras2.2.json": "alexnet",  # Keras 2.2: batch_input_shape on the first layer
    "vgg19_tf_keras2.json": "vgg19",  # tf.keras 2: InputLayer with batch_input_shape
    "vgg16_keras3.json": "vgg16",  # Keras 3: module / registered_name / batch_shape / build_config
    "lenet5_tfjs_model.json": "lenet5",  # TensorFlow.js model.json (modelTopology wrapper)
}


@pytest.mark.parametrize("filename", sorted(KERAS_SAMPLES))
def test_keras_samples_match_the_toml_models(samples: Path, filename: str) -> None:
    keras_model = spec.load_model(str(samples / "keras" / filename))
    toml_model = spec.load_toml(samples / f"{KERAS_SAMPLES[filename]}.toml")
    assert keras_model.count_params() == TOTALS[KERAS_SAMPLES[filename]]
    assert keras_model.input_shape == toml_model.input_shape
    assert keras_model.output_shape() == toml_model.output_shape()

    def weighted(model: L.Model) -> list[int]:
        return [layer.params(shape) for layer, shape, _ in model.shapes() if layer.params(shape)]

    assert weighted(keras_model) == weighted(toml_model)


def test_keras_names_and_fused_activations(samples: Path) -> None:
    model = spec.load_keras_json(samples / "keras" / "vgg16_keras3.json")
    first = model.layers[0]
    assert isinstance(first, L.Conv2D)
    assert (first.name, first.padding, first.activation) == ("block1_conv1", "same", "relu")
    assert model.layers[-1].name == "predictions"
    lenet = spec.load_keras_json(samples / "keras" / "lenet5_keras2.0.json")
    assert [layer.name for layer in lenet.layers][:2] == ["conv2d", "average_pooling2d"]


def _keras3(samples: Path) -> dict:
    return json.loads((samples / "keras" / "vgg16_keras3.json").read_text())


def _dump(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(doc))
    return path


def test_keras_refuses_unsupported_class_naming_layer(samples: Path, tmp_path: Path) -> None:
    doc = _keras3(samples)
    lstm = copy.deepcopy(doc["config"]["layers"][1])
    lstm["class_name"] = "LSTM"
    lstm["config"]["name"] = "lstm_1"
    doc["config"]["layers"].insert(2, lstm)
    with pytest.raises(ModelError, match=r"not supported: class LSTM \(layer lstm_1\)"):
        spec.load_keras_json(_dump(tmp_path, doc))


def test_keras_layer_mapping(tmp_path: Path) -> None:
    def layer(cls: str, **config: object) -> dict:
        return {"class_name": cls, "config": config}

    doc = {
        "class_name": "Sequential",
        "config": {"name": "mapped", "layers": [
            layer("InputLayer", batch_input_shape=[None, 16, 16, 3], name="in"),
            layer("ZeroPadding2D", name="zp", padding=[[1, 2], [3, 4]]),
            layer("Conv2D", name="c", filters=4, kernel_size=[3, 3], strides=[1, 1], padding="valid",
                  dilation_rate=[1, 1], activation="linear", use_bias=False),
            layer("BatchNormalization", name="bn", axis=-1, epsilon=0.001, center=True, scale=True),
            layer("ReLU", name="r", max_value=None, negative_slope=0.0, threshold=0.0),
            layer("LeakyReLU", name="lr", alpha=0.2),
            layer("ELU", name="e", alpha=0.5),
            layer("LocallyConnected2D", name="lc", filters=2, kernel_size=[3, 3], strides=[2, 2],
                  padding="valid", activation="tanh", use_bias=True),
            layer("GlobalMaxPooling2D", name="gmp"),
            layer("Dense", name="d", units=3, activation="linear", use_bias=True),
            layer("Softmax", name="sm", axis=-1),
        ]},
    }
    model = spec.load_keras_json(_dump(tmp_path, doc))
    shapes = [out for _, _, out in model.shapes()]
    # 16+1+2=19 by 16+3+4=23 -> conv 17x21 -> local (17-3)/2+1 = 8, (21-3)/2+1 = 10
    assert shapes == [(19, 23, 3), (17, 21, 4), (17, 21, 4), (17, 21, 4), (17, 21, 4), (17, 21, 4),
                      (8, 10, 2), (2,), (3,), (3,)]
    conv = model.layers[1]
    assert isinstance(conv, L.Conv2D) and conv.activation is None and not conv.use_bias
    functions = [(layer.function, layer.alpha) for layer in model.layers if isinstance(layer, L.Activation)]
    assert functions == [("relu", None), ("leaky_relu", 0.2), ("elu", 0.5), ("softmax", None)]
    assert model.count_params() == 108 + 16 + 8 * 10 * 2 * (3 * 3 * 4 + 1) + 9


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(class_name="Custom"), "model class Custom is not supported; supported: Sequential"),
        (lambda d: d["config"]["layers"][1]["config"].update(data_format="channels_first"),
         r"not supported: Conv2D data_format=channels_first \(convcli is channels-last\) \(layer block1_conv1\)"),
        (lambda d: d["config"]["layers"][1]["config"].update(activation="swoosh"),
         r"layer 'block1_conv1' \(Conv2D\): unknown value for `activation`.*Received: activation=swoosh"),
        (lambda d: d["config"]["layers"][1]["config"].pop("filters"), r"layer 'block1_conv1' \(Conv2D\): `filters` must be a positive integer. Received: filters=None"),
        (lambda d: (d["config"]["layers"].pop(0), d.pop("build_config"),
                    d["config"]["layers"][0].pop("build_config")), "no input shape"),
    ],
)
def test_keras_errors(samples: Path, tmp_path: Path, mutate, message: str) -> None:
    doc = _keras3(samples)
    mutate(doc)
    with pytest.raises(ModelError, match=message):
        spec.load_keras_json(_dump(tmp_path, doc))


def test_keras_input_from_build_config_without_input_layer(samples: Path, tmp_path: Path) -> None:
    doc = _keras3(samples)
    doc["config"]["layers"].pop(0)  # Keras 3 Sequential built with model.build((None, 224, 224, 3))
    model = spec.load_keras_json(_dump(tmp_path, doc))
    assert model.input_shape == (224, 224, 3) and model.count_params() == TOTALS["vgg16"]


def test_not_json_and_not_keras(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        spec.load_model(str(bad))
    with pytest.raises(ModelError, match="not a Keras model JSON"):
        spec.load_keras_json(_dump(tmp_path, {"layers": []}))


# ---- Functional models that are a single chain (keras.applications builds these) --------


def _keras3_functional(samples: Path) -> dict:
    """The Keras 3 VGG16 sample rewritten as Functional (what keras.applications.VGG16 saves)."""
    doc = _keras3(samples)
    doc["class_name"] = "Functional"
    previous = None
    for entry in doc["config"]["layers"]:
        entry["name"] = entry["config"]["name"]
        if previous is None:
            entry["inbound_nodes"] = []
        else:
            tensor = {"class_name": "__keras_tensor__",
                      "config": {"shape": [None, 1], "dtype": "float32", "keras_history": [previous, 0, 0]}}
            entry["inbound_nodes"] = [{"args": [tensor], "kwargs": {}}]
        previous = entry["name"]
    doc["config"]["input_layers"] = [doc["config"]["layers"][0]["name"], 0, 0]
    doc["config"]["output_layers"] = [previous, 0, 0]
    return doc


def test_keras3_functional_chain(samples: Path, tmp_path: Path) -> None:
    model = spec.load_keras_json(_dump(tmp_path, _keras3_functional(samples)))
    assert model.count_params() == TOTALS["vgg16"]
    assert model.layers[0].name == "block1_conv1"


def test_keras2_functional_chain_with_tuple_objects(tmp_path: Path) -> None:
    # tf.keras 2 may write tuples and shapes as {"class_name": "__tuple__", "items": [...]}
    def tup(*items: object) -> dict:
        return {"class_name": "__tuple__", "items": list(items)}

    doc = {"class_name": "Functional", "config": {"name": "cnn", "layers": [
        {"name": "input_1", "class_name": "InputLayer", "inbound_nodes": [],
         "config": {"batch_input_shape": {"class_name": "TensorShape", "items": [None, 28, 28, 1]}, "name": "input_1"}},
        {"name": "conv2d", "class_name": "Conv2D", "inbound_nodes": [[["input_1", 0, 0, {}]]],
         "config": {"name": "conv2d", "filters": 16, "kernel_size": tup(5, 5), "strides": tup(1, 1),
                    "padding": "valid", "dilation_rate": tup(1, 1), "activation": "relu", "use_bias": True}},
        {"name": "flatten", "class_name": "Flatten", "inbound_nodes": [[["conv2d", 0, 0, {}]]], "config": {"name": "flatten"}},
        {"name": "dense", "class_name": "Dense", "inbound_nodes": [[["flatten", 0, 0, {}]]],
         "config": {"name": "dense", "units": 10, "activation": "softmax"}},
    ]}}
    model = spec.load_keras_json(_dump(tmp_path, doc))
    assert model.input_shape == (28, 28, 1)
    assert model.count_params() == 5 * 5 * 16 + 16 + 24 * 24 * 16 * 10 + 10


def test_functional_with_a_branch_is_refused(samples: Path, tmp_path: Path) -> None:
    doc = _keras3_functional(samples)
    layers = doc["config"]["layers"]
    # block2_conv1 also reads block1_conv1: a skip connection
    skip = copy.deepcopy(layers[4]["inbound_nodes"][0]["args"][0])
    skip["config"]["keras_history"] = ["block1_conv1", 0, 0]
    layers[4]["inbound_nodes"][0]["args"].append(skip)
    with pytest.raises(ModelError, match=r"layer 'block2_conv1' \(Conv2D\) takes 1 input\(s\); it is given 2: block1_pool, block1_conv1"):
        spec.load_keras_json(_dump(tmp_path, doc))


# ---- arrow notation: random nested repetitions against a plain expansion ---------------

_SIMPLE = {"RELU": "Activation", "TANH": "Activation", "BN": "BatchNormalization", "DO(0.5)": "Dropout",
           "CONV(4,3,pad=same)": "Conv2D", "ZEROPAD(1)": "ZeroPadding2D"}
_items = st.recursive(
    st.sampled_from(sorted(_SIMPLE)),
    lambda inner: st.tuples(st.lists(inner, min_size=1, max_size=3), st.integers(1, 3)),
    max_leaves=8,
)


def _render(item: object, draw_case: bool) -> str:
    if isinstance(item, str):
        return item.lower() if draw_case else item
    group, count = item  # type: ignore[misc]
    return "[" + " => ".join(_render(i, draw_case) for i in group) + f"]*{count}"


def _expand(item: object) -> list[str]:
    if isinstance(item, str):
        return [_SIMPLE[item]]
    group, count = item  # type: ignore[misc]
    return [t for _ in range(count) for i in group for t in _expand(i)]


@settings(max_examples=80, deadline=None)
@given(st.lists(_items, min_size=1, max_size=4), st.booleans())
def test_arrow_repetition_matches_plain_expansion(items: list[object], lower: bool) -> None:
    text = "INPUT(8,8,2) => " + " => ".join(_render(i, lower) for i in items)
    model = spec.parse_arrow(text)
    assert [layer.type for layer in model.layers] == [t for i in items for t in _expand(i)]
    names = [layer.name for layer in model.layers]
    assert len(set(names)) == len(names)


def test_toml_weights_path_is_relative_to_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    path = _write(folder, 'weights = "w/net.npz"\ninput = [4, 4, 1]\n[[layers]]\ntype = "relu"\n')
    assert spec.load_toml(path).weights_path == (folder / "w" / "net.npz").resolve()
    assert spec.parse_arrow("INPUT(4,4,1) => RELU").weights_path is None
    with pytest.raises(ModelError, match="`weights` must be a path"):
        spec.load_toml(_write(folder, 'weights = 3\ninput = [4, 4, 1]\n[[layers]]\ntype = "relu"\n'))


def test_huge_repetition_and_other_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"^column 17: the repetition makes more than 100,000 layers"):
        spec.parse_arrow("INPUT(4,4,1) => [RELU => [TANH] * 1000] * 1000")
    other = tmp_path / "model.txt"
    other.write_text("INPUT(4,4,1) => RELU")
    with pytest.raises(InputError, match="expected a .toml, a Keras .json, .keras or .h5 file"):
        spec.load_model(str(other))


def test_text_too_long_for_a_file_name_is_not_a_file() -> None:
    # longer than NAME_MAX (255): the system refuses to stat it; still a clean error
    with pytest.raises(ModelError, match="must start with INPUT"):
        spec.load_model("RELU => " * 60 + "RELU")
    with pytest.raises(InputError, match="does not exist"):
        spec.load_model("a" * 300 + ".toml")
