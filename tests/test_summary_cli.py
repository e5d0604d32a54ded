"""`convcli summary`: the table, --json, --csv and errors that name the place."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.conftest import run_convcli
from tests.test_shapes_cli import imported_packages
from tests.test_spec import VGG16_ARROW


def test_table_lenet5(cli, samples: Path) -> None:
    result = cli("summary", str(samples / "lenet5.toml"))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert 'Model: "lenet5"' in out
    for row in ("c1 (Conv2D + tanh)", "28x28x6", "156", "2,416", "48,120", "10,164", "850"):
        assert row in out
    assert "Total params: 61,706 (241.04 KB)" in out  # Keras prints 241.04 KB too
    assert "MACs: 416,520" in out
    # the numbers are never cut short on a narrow terminal
    assert "…" not in out


def test_table_vgg16_from_the_lecture_pattern(cli) -> None:
    result = cli("summary", VGG16_ARROW, env={"COLUMNS": "200"})  # every column
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "Total params: 138,357,544 (527.79 MB)" in out  # as Keras' summary of VGG16
    assert "MACs: 15,470,264,320 (15.47 G)" in out
    assert "FLOPs = 2 x MACs: 30,940,528,640" in out
    assert "212 (32)" in out  # receptive field of pool5 and its jump


def test_json(cli, samples: Path) -> None:
    result = cli("summary", str(samples / "vgg16.toml"), "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["total_params"] == 138_357_544
    assert doc["total_macs"] == 15_470_264_320
    assert doc["params_bytes"] == 138_357_544 * 4
    pool5 = next(layer for layer in doc["layers"] if layer["name"] == "block5_pool")
    assert pool5 == {**pool5, "type": "MaxPooling2D", "output_shape": [7, 7, 512],
                     "params": 0, "macs": 0, "receptive_field": {"size": [212, 212], "jump": [32, 32]}}
    conv1 = doc["layers"][0]
    assert conv1["params"] == 1_792 and conv1["params_unshared"] == 224 * 224 * 64 * 28
    assert conv1["activation_bytes"] == 224 * 224 * 64 * 4


@pytest.mark.parametrize("filename", ["vgg16_keras3.json", "vgg19_tf_keras2.json", "lenet5_tfjs_model.json"])
def test_keras_json_same_as_toml(cli, samples: Path, filename: str) -> None:
    toml = {"vgg16": "vgg16.toml", "vgg19": "vgg19.toml", "lenet5": "lenet5.toml"}[filename.split("_")[0]]
    a = json.loads(cli("summary", str(samples / "keras" / filename), "--json").stdout)
    b = json.loads(cli("summary", str(samples / toml), "--json").stdout)
    for key in ("total_params", "total_macs", "peak_activation_bytes", "output_shape"):
        assert a[key] == b[key]


def test_csv(cli, samples: Path) -> None:
    result = cli("summary", str(samples / "alexnet.toml"), "--csv")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows[0]["name"] == "conv1" and rows[0]["output_shape"] == "55x55x96"
    assert rows[0]["params"] == "34944" and rows[0]["params_unshared"] == "105705600"
    assert rows[0]["receptive_field"] == "11x11" and rows[0]["jump"] == "4x4"
    assert sum(int(r["params"]) for r in rows) == 62_378_344


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("INPUT(10,10,3) => CONV(2,3,stride=2)", "layer 'conv1' (Conv2D), height: output size (10 - 3 + 2*0)/2 + 1 = 4.5 is not an integer"),
        ("INPUT(224,224,3) => [CONV(64,3,pad=1) => RELU] * 2 => CONVV(64,3)", "column 55: unknown layer 'CONVV(64,3)'; expected one of INPUT, CONV"),
        ("missing.toml", "model file missing.toml does not exist"),
    ],
)
def test_errors(cli, model: str, message: str) -> None:
    result = cli("summary", model)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in " ".join(result.stderr.split())


def test_refused_keras_class(cli, samples: Path, tmp_path: Path) -> None:
    doc = json.loads((samples / "keras" / "lenet5_keras2.0.json").read_text())
    doc["config"].insert(2, {"class_name": "LSTM", "config": {"name": "lstm_1", "units": 8}})
    doc["config"].insert(4, {"class_name": "Lambda", "config": {"name": "lambda_1", "function": "x"}})
    doc["config"].insert(5, {"class_name": "LSTM", "config": {"name": "lstm_2", "units": 8}})
    path = tmp_path / "rnn.json"
    path.write_text(json.dumps(doc))
    result = cli("summary", str(path), "--json")
    assert result.exit_code == 2 and result.stdout == ""
    # every unsupported class at once, each with the layers using it (a Lambda is never evaluated)
    assert result.stderr.count("\n") == 1
    assert ("rnn.json: not supported: class LSTM (layers lstm_1, lstm_2); class Lambda (layer lambda_1)"
            in " ".join(result.stderr.split()))


def test_json_and_csv_together(cli, samples: Path) -> None:
    result = cli("summary", str(samples / "lenet5.toml"), "--json", "--csv")
    assert result.exit_code == 2 and "choose one of --json, --csv and --dot" in result.stderr


def test_subprocess_without_numpy(samples: Path) -> None:
    proc = run_convcli("summary", str(samples / "vgg19.toml"), "--json", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["total_params"] == 143_667_240
    imported = imported_packages(proc.stderr)
    assert "convcli" in imported
    assert not imported & {"numpy", "scipy", "PIL"}
