"""Model summaries against published Keras totals, hand computations and a brute-force
receptive-field oracle."""

from __future__ import annotations

import doctest
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convcli import geometry
from convcli import summary as S
from convcli.errors import ShapeError
from convcli.spec import load_model, parse_arrow
from tests.test_spec import VGG16_ARROW

VGG16_NO_TOP = VGG16_ARROW.split(" => [FC(4096)")[0]


def test_doctests() -> None:
    failures, tried = doctest.testmod(S)
    assert tried >= 4 and failures == 0


def test_lenet5_per_layer(samples: Path) -> None:
    s = S.summarize(load_model(str(samples / "lenet5.toml")))
    assert [r.params for r in s.rows if r.params] == [156, 2_416, 48_120, 10_164, 850]
    assert s.total_params == 61_706
    assert s.trainable_params == 61_706 and s.non_trainable_params == 0
    assert s.params_bytes == 61_706 * 4


@pytest.mark.parametrize(
    ("source", "total"),
    [
        ("alexnet.toml", 62_378_344),
        ("vgg16.toml", 138_357_544),
        ("vgg19.toml", 143_667_240),
        ("keras/vgg16_keras3.json", 138_357_544),
        ("keras/alexnet_keras2.2.json", 62_378_344),
    ],
)
def test_published_totals(samples: Path, source: str, total: int) -> None:
    assert S.summarize(load_model(str(samples / source))).total_params == total


def test_vgg16_macs_and_flops() -> None:
    s = S.summarize(parse_arrow(VGG16_ARROW))
    assert s.total_params == 138_357_544
    assert s.total_macs == 15_470_264_320  # the published 15.47 GMACs of VGG16
    assert s.total_flops == 2 * 15_470_264_320


def test_vgg16_without_top() -> None:
    s = S.summarize(parse_arrow(VGG16_NO_TOP))
    assert s.total_params == 14_714_688  # keras.applications.VGG16(include_top=False)
    assert s.output_shape == (7, 7, 512)


def test_vgg16_receptive_fields(samples: Path) -> None:
    s = S.summarize(load_model(str(samples / "vgg16.toml")))
    rf = {r.name: r.receptive_field for r in s.rows}
    assert rf["block1_conv1"] == (3, 3, 1, 1)
    assert rf["block1_pool"] == (6, 6, 2, 2)
    assert rf["block5_pool"] == (212, 212, 32, 32)
    assert rf["fc1"] is None  # every neuron sees the whole image


def test_alexnet_rows_by_hand(samples: Path) -> None:
    s = S.summarize(load_model(str(samples / "alexnet.toml")))
    conv1 = s.rows[0]
    assert conv1.output_shape == (55, 55, 96)
    assert (conv1.params, conv1.params_unshared) == (34_944, 105_705_600)
    assert conv1.macs == 290_400 * 363
    assert conv1.receptive_field == (11, 11, 4, 4)
    assert conv1.activation_bytes == 55 * 55 * 96 * 4
    assert s.rows[1].receptive_field == (11 + 2 * 4, 11 + 2 * 4, 8, 8)  # pool 3/2 after jump 4
    # in a chain the outputs alive are one layer's input and output; the largest pair is conv1: 227*227*3 + 55*55*96 floats
    assert s.peak_activation_bytes == (227 * 227 * 3 + 55 * 55 * 96) * 4


def test_batch_norm_is_partly_non_trainable() -> None:
    s = S.summarize(parse_arrow("INPUT(8,8,3) => CONV(16,3,pad=same) => BN => RELU"))
    assert s.total_params == 448 + 64
    assert s.trainable_params == 448 + 32  # gamma and beta; the moving statistics are not trained


def test_layer_that_does_not_fit_stops_the_summary() -> None:
    model = parse_arrow("INPUT(32,32,3) => CONV(8,3) => CONV(8,3,stride=2) => RELU")
    with pytest.raises(ShapeError, match=r"layer 'conv2' \(Conv2D\), height: .*\(30 - 3 \+ 2\*0\)/2 \+ 1 = 14\.5"):
        S.summarize(model)


def test_json_and_csv(samples: Path) -> None:
    s = S.summarize(load_model(str(samples / "lenet5.toml")))
    doc = s.to_json()
    # MACs by hand: c1 28*28*6*25 + c3 10*10*16*150 + c5 120*400 + f6 84*120 + out 10*84
    assert doc["total_params"] == 61_706 and doc["total_macs"] == 416_520
    first = doc["layers"][0]
    assert {"name", "type", "output_shape", "params", "macs", "receptive_field"} <= set(first)
    assert first["output_shape"] == [28, 28, 6] and first["receptive_field"] == {"size": [5, 5], "jump": [1, 1]}
    rows = s.csv_rows()
    assert rows[0][:4] == ["name", "type", "output_shape", "params"]
    assert rows[1][:4] == ["c1", "Conv2D", "28x28x6", "156"]
    assert len(rows) == len(s.rows) + 1


# ---- receptive field: brute force over which input pixels reach one output neuron ----


def _brute_force_rf(chain: list[tuple[int, int, int, int]]) -> tuple[int, int]:
    """For a 1-D chain of (kernel, stride, pad_before, dilation), collect every input
    coordinate that output neuron 0 (and 1) depends on; size and jump follow."""

    def inputs_of(position: int) -> set[int]:
        positions = {position}
        for kernel, stride, pad, dilation in reversed(chain):
            positions = {p * stride - pad + j * dilation for p in positions for j in range(kernel)}
        return positions

    first, second = inputs_of(0), inputs_of(1)
    return max(first) - min(first) + 1, min(second) - min(first)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(0, 2), st.integers(1, 2)),
        min_size=1, max_size=5,
    )
)
def test_receptive_field_matches_brute_force(chain: list[tuple[int, int, int, int]]) -> None:
    size, jump, start = 1, 1, Fraction(1, 2)
    for kernel, stride, pad, dilation in chain:
        size, jump, start = geometry.receptive_field_step(size, jump, start, kernel, stride, pad, dilation)
    assert (size, jump) == _brute_force_rf(chain)


def test_summary_receptive_field_matches_brute_force_on_a_model() -> None:
    model = parse_arrow(
        "INPUT(63,63,3) => CONV(4,5,stride=2,pad=2) => POOL(3,stride=2,pad=same) => "
        "CONV(4,3,dilation=2,pad=same) => AVGPOOL(2)"
    )
    s = S.summarize(model)
    # pads: conv 2; pool same on 32 with k3 s2: out 16, total (15*2+3-32)=1 -> 0 before;
    # dilated conv same: 2 before; avgpool 0
    size, jump = _brute_force_rf([(5, 2, 2, 1), (3, 2, 0, 1), (3, 1, 2, 2), (2, 2, 0, 1)])
    assert s.rows[-1].receptive_field == (size, size, jump, jump)


# ---- one layer (convcli shapes) ----------------------------------------------------


def test_layer_arithmetic_lecture_figures() -> None:
    a = S.layer_arithmetic(227, kernel=11, stride=4, depth=3, filters=96)
    assert a.output_shape == (55, 55, 96) and a.neurons == 290_400
    assert a.weights_per_filter == 363
    assert (a.params_shared, a.params_unshared) == (34_944, 105_705_600)
    assert a.width.substituted == "(227 - 11 + 2*0)/4 + 1 = 55"
    demo = S.layer_arithmetic(5, kernel=3, stride=2, padding=1, depth=3, filters=2)  # cs231n demo
    assert demo.output_shape == (3, 3, 2) and demo.params_shared == 2 * 27 + 2
    pool = S.layer_arithmetic(224, kernel=2, stride=2, depth=64, pool=True)
    assert pool.output_shape == (112, 112, 64) and pool.params_shared == 0


def test_layer_arithmetic_four_and_a_half() -> None:
    with pytest.raises(ShapeError, match=r"\(10 - 3 \+ 2\*0\)/2 \+ 1 = 4\.5 is not an integer.*"
                                         r"Paddings that fit with S=2: none; strides that fit with P=0: 1, 7"):
        S.layer_arithmetic(10, kernel=3, stride=2)
    # with S=3, the paddings 1, 4, 7 give (7 + 2P)/3 whole
    with pytest.raises(ShapeError, match="Paddings that fit with S=3: 1, 4, 7"):
        S.layer_arithmetic(10, kernel=3, stride=3)


# ---- optional cross-check: whole random models against PyTorch ---------------------------


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(12, 40),
    depth=st.integers(1, 3),
    convs=st.lists(st.tuples(st.integers(1, 6), st.sampled_from([1, 3, 5]), st.booleans()), min_size=1, max_size=3),
    units=st.lists(st.integers(1, 20), min_size=1, max_size=2),
)
def test_totals_against_torch(size: int, depth: int, convs: list[tuple[int, int, bool]], units: list[int]) -> None:
    torch = pytest.importorskip("torch")
    parts = [f"INPUT({size},{size},{depth})"]
    modules = []
    channels, side = depth, size
    for filters, kernel, pool in convs:
        pad = kernel // 2  # odd kernels with pad (F-1)/2 keep the size (the lecture's zero padding)
        parts += [f"CONV({filters},{kernel},pad={pad})", "RELU"]
        modules += [torch.nn.Conv2d(channels, filters, kernel, padding=pad), torch.nn.ReLU()]
        channels = filters
        if pool and side % 2 == 0:
            parts.append("POOL(2)")
            modules.append(torch.nn.MaxPool2d(2))
            side //= 2
    modules.append(torch.nn.Flatten())
    inputs = channels * side * side
    for n in units:
        parts.append(f"FC({n})")
        modules.append(torch.nn.Linear(inputs, n))
        inputs = n
    net = torch.nn.Sequential(*modules).to("meta")
    s = S.summarize(parse_arrow(" => ".join(parts)))
    assert s.total_params == sum(p.numel() for p in net.parameters())
    assert s.output_shape == tuple(net(torch.empty(1, depth, size, size, device="meta")).shape[1:])
