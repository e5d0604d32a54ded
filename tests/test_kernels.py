"""The kernel library, `resolve_kernel` and `convcli kernels`.

Reference values come from outside the code: scipy.ndimage's own sobel/prewitt/laplace,
binomial coefficients from math.comb, the lecture's matrices, hand computations.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st

from convcli.errors import KernelError
from convcli.kernels import (
    ENV_VAR,
    GradientPair,
    Kernel,
    KernelLibrary,
    builtin_folder,
    parse_matrix,
    resolve_kernel,
)

MODES = ("reflect", "constant", "nearest", "mirror", "wrap")

# Every name SPEC § kernels asks for (pairs and their single kernels).
REQUIRED = [
    "identity", "box3", "box5", "gaussian3", "gaussian5", "gaussian7", "sharpen", "unsharp",
    "sobel", "sobel-x", "sobel-y", "prewitt", "prewitt-x", "prewitt-y",
    "scharr", "scharr-x", "scharr-y", "laplacian4", "laplacian8", "log", "emboss", "outline",
    "curve", "haar-edge-horizontal", "haar-edge-vertical", "haar-line-horizontal",
    "haar-line-vertical", "haar-four",
]  # fmt: skip

# The lecture's curve detector ("Pixel representation of filter"), copied from the slides.
LECTURE_CURVE = [
    [0, 0, 0, 0, 0, 30, 0],
    [0, 0, 0, 0, 30, 0, 0],
    [0, 0, 0, 30, 0, 0, 0],
    [0, 0, 0, 30, 0, 0, 0],
    [0, 0, 0, 30, 0, 0, 0],
    [0, 0, 0, 30, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
]


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(7).uniform(0, 255, size=(23, 31))


@pytest.fixture(autouse=True)
def _no_user_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def kernel(name: str) -> Kernel:
    item = resolve_kernel(name)
    assert isinstance(item, Kernel)
    return item


# ----------------------------------------------------------------------------- the library


@pytest.mark.parametrize("name", REQUIRED)
def test_required_names_resolve(name: str) -> None:
    item = resolve_kernel(name)
    assert item.name == name
    assert item.builtin
    assert item.description and item.source


def test_listing_has_every_required_name_once() -> None:
    names = [e.item.name for e in KernelLibrary().entries()]
    assert len(names) == len(set(names))
    assert set(REQUIRED) <= set(names)


def test_box3_is_the_lectures_one_ninth_kernel() -> None:
    box3 = kernel("box3")
    assert box3.scale == Fraction(1, 9)
    assert box3.written.tolist() == [[1.0] * 3] * 3
    assert np.all(box3.weights == 1 / 9)


def test_box5_is_the_mean_of_25() -> None:
    box5 = kernel("box5")
    assert box5.scale == Fraction(1, 25)
    assert np.all(box5.weights == 1 / 25)


@pytest.mark.parametrize(("name", "size", "denominator"), [("gaussian3", 3, 16), ("gaussian5", 5, 256), ("gaussian7", 7, 4096)])
def test_gaussians_are_binomial_outer_products(name: str, size: int, denominator: int) -> None:
    row = np.array([math.comb(size - 1, k) for k in range(size)], dtype=float)
    g = kernel(name)
    assert g.scale == Fraction(1, denominator)
    np.testing.assert_array_equal(g.written, np.outer(row, row))
    np.testing.assert_allclose(g.weights, np.outer(row, row) / denominator, rtol=0, atol=1e-17)
    assert g.separable and g.rank == 1
    assert g.exact_total() == 1


def test_unsharp_is_two_identity_minus_gaussian5() -> None:
    unsharp, g5 = kernel("unsharp"), kernel("gaussian5")
    two_identity = np.zeros((5, 5))
    two_identity[2, 2] = 2
    assert unsharp.scale == Fraction(-1, 256)
    np.testing.assert_allclose(unsharp.weights, two_identity - g5.weights, atol=1e-15)
    assert unsharp.written[2, 2] == -476


@pytest.mark.parametrize(
    ("name", "total"),
    [
        ("identity", 1), ("box3", 1), ("box5", 1), ("sharpen", 1), ("unsharp", 1), ("emboss", 1),
        ("sobel-x", 0), ("sobel-y", 0), ("prewitt-x", 0), ("prewitt-y", 0), ("scharr-x", 0),
        ("scharr-y", 0), ("laplacian4", 0), ("laplacian8", 0), ("log", 0), ("log9", 0),
        ("outline", 0), ("haar-edge-horizontal", 0), ("haar-edge-vertical", 0),
        ("haar-line-horizontal", 0), ("haar-line-vertical", 0), ("haar-four", 0), ("curve", 180),
    ],
)  # fmt: skip
def test_sums(name: str, total: int) -> None:
    k = kernel(name)
    assert k.exact_total() == total
    assert k.total == pytest.approx(total, abs=1e-12)


def test_identity_leaves_the_image_unchanged(image: np.ndarray) -> None:
    np.testing.assert_array_equal(ndi.correlate(image, kernel("identity").weights), image)


def test_curve_is_the_lectures_filter() -> None:
    assert kernel("curve").weights.tolist() == LECTURE_CURVE


# x kernels respond to vertical edges: the derivative along columns (axis 1), as
# scipy.ndimage.sobel(axis=1); applied as correlation (no flip).
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("family", "reference"), [("sobel", ndi.sobel), ("prewitt", ndi.prewitt)])
def test_x_and_y_match_scipy(image: np.ndarray, mode: str, family: str, reference) -> None:
    gx = ndi.correlate(image, kernel(f"{family}-x").weights, mode=mode)
    gy = ndi.correlate(image, kernel(f"{family}-y").weights, mode=mode)
    np.testing.assert_allclose(gx, reference(image, axis=1, mode=mode), atol=1e-9)
    np.testing.assert_allclose(gy, reference(image, axis=0, mode=mode), atol=1e-9)


def test_sobel_x_is_the_documented_matrix() -> None:
    assert kernel("sobel-x").weights.tolist() == [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    assert kernel("scharr-x").weights.tolist() == [[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]]


def test_x_kernel_is_positive_where_the_image_gets_brighter_to_the_right() -> None:
    ramp = np.tile(np.arange(8.0), (8, 1))  # brighter to the right: a vertical edge pattern
    for family in ("sobel", "prewitt", "scharr"):
        gx = ndi.correlate(ramp, kernel(f"{family}-x").weights)[4, 4]
        gy = ndi.correlate(ramp, kernel(f"{family}-y").weights)[4, 4]
        assert gx > 0 and gy == 0


def test_scharr_matches_opencv(image: np.ndarray) -> None:
    cv2 = pytest.importorskip("cv2")
    for (dx, dy), name in (((1, 0), "scharr-x"), ((0, 1), "scharr-y")):
        expected = cv2.Scharr(image, cv2.CV_64F, dx, dy, borderType=cv2.BORDER_REFLECT_101)
        got = ndi.correlate(image, kernel(name).weights, mode="mirror")  # mirror = REFLECT_101
        np.testing.assert_allclose(got, expected, atol=1e-9)


def test_laplacian4_is_scipy_laplace(image: np.ndarray) -> None:
    for mode in MODES:
        np.testing.assert_allclose(
            ndi.correlate(image, kernel("laplacian4").weights, mode=mode), ndi.laplace(image, mode=mode), atol=1e-9
        )


def test_laplacian8_and_outline_are_negatives() -> None:
    # The 8-neighbour Laplacian: every neighbour, diagonals included, minus 8 times the centre.
    assert kernel("laplacian8").weights.tolist() == [[1, 1, 1], [1, -8, 1], [1, 1, 1]]
    np.testing.assert_array_equal(kernel("laplacian8").weights, -kernel("outline").weights)


def test_log_kernels_are_symmetric_mexican_hats() -> None:
    for name in ("log", "log9"):
        w = kernel(name).weights
        np.testing.assert_array_equal(w, w.T)
        np.testing.assert_array_equal(w, w[::-1, ::-1])
        centre = w[w.shape[0] // 2, w.shape[1] // 2]
        assert centre == w.max() > 0


@pytest.mark.parametrize(
    ("name", "light"),
    [
        ("haar-edge-horizontal", np.s_[:3, :]),
        ("haar-edge-vertical", np.s_[:, :3]),
        ("haar-line-horizontal", np.s_[2:4, :]),
        ("haar-line-vertical", np.s_[:, 2:4]),
    ],
)
def test_haar_response_is_light_mean_minus_dark_mean(name: str, light) -> None:
    patch = np.full((6, 6), 40.0)
    patch[light] = 200.0
    w = kernel(name).weights
    assert (patch * w).sum() == pytest.approx(160.0)
    assert ((255 - patch) * w).sum() == pytest.approx(-160.0)  # the inverse pattern
    assert (np.full((6, 6), 99.0) * w).sum() == pytest.approx(0.0, abs=1e-12)


def test_haar_four_rectangle() -> None:
    patch = np.full((6, 6), 10.0)
    patch[:3, :3] = patch[3:, 3:] = 100.0
    assert (patch * kernel("haar-four").weights).sum() == pytest.approx(90.0)


@pytest.mark.parametrize("family", ["sobel", "prewitt", "scharr"])
def test_pairs_name_their_two_kernels(family: str) -> None:
    pair = resolve_kernel(family)
    assert isinstance(pair, GradientPair)
    assert (pair.x.name, pair.y.name) == (f"{family}-x", f"{family}-y")
    np.testing.assert_array_equal(pair.y.weights, pair.x.weights.T)


def test_weights_are_read_only() -> None:
    with pytest.raises(ValueError):
        kernel("box3").weights[0, 0] = 5


def test_rank_and_separability() -> None:
    assert kernel("sobel-x").separable
    assert not kernel("sharpen").separable and kernel("sharpen").rank == 2
    assert kernel("curve").rank == 3


# ----------------------------------------------------------------------------- inline matrices


def test_inline_spaces_commas_and_fractions() -> None:
    k = resolve_kernel("1 0 -1; 2,0,-2; 1, 0, -1")
    assert isinstance(k, Kernel)
    assert k.weights.tolist() == [[1, 0, -1], [2, 0, -2], [1, 0, -1]]
    k = resolve_kernel("1/9 1/9 1/9; 1/9 1/9 1/9; 1/9 1/9 1/9")
    assert np.all(k.weights == 1 / 9)
    assert resolve_kernel("0.25 0.5; -1e-1 3").weights.tolist() == [[0.25, 0.5], [-0.1, 3]]


def test_inline_leading_scale_is_exact() -> None:
    k = resolve_kernel("1/9 * 1 1 1; 1 1 1; 1 1 1")
    assert isinstance(k, Kernel)
    assert k.scale == Fraction(1, 9) and np.all(k.weights == 1 / 9)
    assert k.exact_total() == 1


def test_single_value_is_a_one_by_one_kernel() -> None:
    assert resolve_kernel("2").weights.tolist() == [[2.0]]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 5).flatmap(
        lambda cols: st.lists(
            st.lists(st.fractions(min_value=-50, max_value=50, max_denominator=12), min_size=cols, max_size=cols),
            min_size=1,
            max_size=5,
        )
    ),
    st.sampled_from([" ", ", ", ",", "  "]),
)
def test_inline_round_trip(rows: list[list[Fraction]], sep: str) -> None:
    text = "; ".join(sep.join(str(v) for v in row) for row in rows)
    k = parse_matrix(text)
    expected = [[float(v) for v in row] for row in rows]
    assert k.weights.tolist() == expected


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sobelx", r"Unknown kernel 'sobelx'\. Did you mean: sobel-x"),
        ("gausian5", r"Did you mean: gaussian5"),
        ("Box3", r"Did you mean: .*box3"),
        ("1 2 3; 4 5", r"rows have different lengths \(row 1 has 3, row 2 has 2\)"),
        ("1 2; x 4", r"'x' is not a number"),
        ("1 2; 3 4O", r"'4O' is not a number"),
        ("1 nan; 2 3", r"NaN and infinite values are not allowed.*nan"),
        ("1 2; inf 3", r"NaN and infinite values are not allowed.*inf"),
        ("1/0 1", r"division by zero"),
        ("", r"Empty kernel"),
        ("   ", r"Empty kernel"),
        (";;", r"the kernel is empty"),
        ("missing/kernel.npy", r"Kernel file not found: missing/kernel\.npy"),
        ("2 * 1 * 1", r"a scale is written once"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(KernelError, match=message):
        resolve_kernel(spec)


def test_unknown_name_without_close_names_still_says_where_to_look() -> None:
    with pytest.raises(KernelError, match=r"Unknown kernel 'zzzzzzzz'\. `convcli kernels` lists the library"):
        resolve_kernel("zzzzzzzz")


# ----------------------------------------------------------------------------- files


def test_npy_kernel(tmp_path: Path) -> None:
    weights = np.arange(15, dtype=np.float32).reshape(3, 5) / 7
    np.save(tmp_path / "k.npy", weights)
    k = resolve_kernel(str(tmp_path / "k.npy"))
    assert isinstance(k, Kernel)
    np.testing.assert_array_equal(k.weights, weights.astype(np.float64))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((3, 3, 3)), r"non-empty 2-D array\. Received shape \(3, 3, 3\)"),
        (np.zeros((0, 3)), r"non-empty 2-D array"),
        (np.array([[1.0, np.nan]]), r"NaN and infinite"),
        (np.array([["a", "b"]]), r"real numbers"),
        (np.array([[True, False]]), r"real numbers\. Received dtype bool"),
    ],
)
def test_bad_npy_kernels(tmp_path: Path, array: np.ndarray, message: str) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(KernelError, match=message):
        resolve_kernel(str(path))


def test_text_matrix_file(tmp_path: Path) -> None:
    path = tmp_path / "edge.txt"
    path.write_text("# my edge kernel\n-1 0 1\n-2 0 2  # middle row\n-1 0 1\n")
    k = resolve_kernel(str(path))
    assert k.weights.tolist() == kernel("sobel-x").weights.tolist()
    path.write_text("1 2\n3\n")
    with pytest.raises(KernelError, match=r"edge\.txt: rows have different lengths"):
        resolve_kernel(str(path))


def test_toml_file_by_path(tmp_path: Path) -> None:
    path = tmp_path / "half.toml"
    path.write_text('name = "half"\ndescription = "d"\nscale = "1/2"\nmatrix = [[1, 1]]\n')
    k = resolve_kernel(str(path))
    assert isinstance(k, Kernel) and k.weights.tolist() == [[0.5, 0.5]] and not k.builtin
    family = tmp_path / "fam.toml"
    family.write_text(
        '[[kernel]]\nname = "fam-a"\nmatrix = [[1]]\n[[kernel]]\nname = "fam-b"\nmatrix = [[2]]\n'
    )
    with pytest.raises(KernelError, match=r"fam\.toml: the file defines several kernels \(fam-a, fam-b\)"):
        resolve_kernel(str(family))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "bad"\nmatrix = [[1, 2]', r"bad\.toml: not valid TOML"),
        ('name = "bad"\nmatrix = [[1, 2], [3]]\n', r"bad\.toml: kernel 'bad': rows have different lengths"),
        ('name = "bad"\nmatrix = [[1, "x"]]\n', r"bad\.toml: kernel 'bad': 'x' is not a number"),
        ('name = "bad"\nmatrix = [[1, nan]]\n', r"bad\.toml: kernel 'bad': NaN and infinite"),
        ('name = "bad"\nmatrix = []\n', r"bad\.toml: kernel 'bad': the kernel is empty"),
        ('name = "bad"\n', r"bad\.toml: kernel 'bad': missing `matrix`"),
        ('name = "bad"\nmatrix = [[1]]\nscael = "1/9"\n', r"bad\.toml: unknown key 'scael'\. Allowed keys are: name"),
        ('name = "bad"\nmatrix = [[1]]\nscale = "0"\n', r"`scale` must not be 0"),
        ('[[kernel]]\nname = "bad-x"\nmatrix = [[1]]\n[[pair]]\nname = "bad"\nx = "bad-x"\ny = "bad-z"\n',
         r"pair 'bad': `y` must name a kernel defined in the same file \(defined: bad-x\)\. Received: y='bad-z'"),
        ("# nothing\n", r"bad\.toml: no kernel defined"),
    ],
)  # fmt: skip
def test_malformed_toml_names_file_and_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(KernelError, match=message):
        resolve_kernel(str(path))


# ----------------------------------------------------------------------------- user folders


def write_kernel(folder: Path, name: str, matrix: str, description: str = "user kernel") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\ndescription = "{description}"\nmatrix = {matrix}\n')
    return path


def test_user_kernel_overrides_builtin(tmp_path: Path) -> None:
    write_kernel(tmp_path, "box3", "[[2, 2], [2, 2]]")
    k = resolve_kernel("box3", [tmp_path])
    assert k.weights.tolist() == [[2, 2], [2, 2]] and not k.builtin
    entries = {e.item.name: e for e in KernelLibrary([tmp_path]).entries()}
    assert entries["box3"].overrides and not entries["box3"].item.builtin
    assert not entries["box5"].overrides and entries["box5"].item.builtin
    assert resolve_kernel("box3").builtin  # without the folder: the built-in


def test_env_folders_and_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write_kernel(first, "mine", "[[1]]")
    write_kernel(second, "mine", "[[2]]")
    write_kernel(second, "other", "[[3]]")
    monkeypatch.setenv(ENV_VAR, f"{first}:{second}")
    assert resolve_kernel("mine").weights.tolist() == [[1.0]]
    assert resolve_kernel("other").weights.tolist() == [[3.0]]
    # --kernel-path comes before the environment variable
    cli_folder = tmp_path / "cli"
    write_kernel(cli_folder, "mine", "[[4]]")
    assert resolve_kernel("mine", [cli_folder]).weights.tolist() == [[4.0]]


def test_family_file_in_user_folder_is_found_by_prefix(tmp_path: Path) -> None:
    (tmp_path / "edge.toml").write_text(
        '[[kernel]]\nname = "edge-a"\nmatrix = [[1, 0], [0, -1]]\n'
        '[[kernel]]\nname = "edge-b"\nmatrix = [[0, 1], [-1, 0]]\n'
        '[[pair]]\nname = "edge"\nx = "edge-a"\ny = "edge-b"\n'
    )
    assert resolve_kernel("edge-b", [tmp_path]).weights.tolist() == [[0.0, 1.0], [-1.0, 0.0]]
    pair = resolve_kernel("edge", [tmp_path])
    assert isinstance(pair, GradientPair) and pair.x.name == "edge-a"
    (tmp_path / "edge.toml").write_text(
        '[[kernel]]\nname = "edge-a"\nmatrix = [[1, -1]]\n'
        '[[kernel]]\nname = "edge-b"\nmatrix = [[1], [-1]]\n'
        '[[pair]]\nname = "edge"\nx = "edge-a"\ny = "edge-b"\n'
    )
    with pytest.raises(KernelError, match=r"edge\.toml: pair 'edge': x and y kernels must have the same size"):
        resolve_kernel("edge", [tmp_path])


def test_missing_user_folders_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KernelError, match=r"--kernel-path .*nowhere: no such folder"):
        resolve_kernel("box3", [tmp_path / "nowhere"])
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "gone"))
    with pytest.raises(KernelError, match=rf"{ENV_VAR} entry .*gone: no such folder"):
        resolve_kernel("box3")


def test_library_files_must_be_named_after_their_kernels(tmp_path: Path) -> None:
    (tmp_path / "stuff.toml").write_text('name = "thing"\nmatrix = [[1]]\n')
    with pytest.raises(KernelError, match=r"stuff\.toml: kernel name 'thing' must be 'stuff' or start with 'stuff-'"):
        KernelLibrary([tmp_path]).entries()


def test_files_are_parsed_only_when_needed(tmp_path: Path) -> None:
    # A broken file elsewhere in the folder does not stop a lookup that does not need it...
    (tmp_path / "broken.toml").write_text("name = [[[")
    write_kernel(tmp_path, "fine", "[[1, 2]]")
    library = KernelLibrary([tmp_path])
    assert library.get("fine").weights.tolist() == [[1.0, 2.0]]
    assert library.get("sobel-x").builtin
    assert set(library._cache) == {tmp_path / "fine.toml", builtin_folder() / "sobel.toml"}
    # ...but listing the library reports it, with the file and the problem.
    with pytest.raises(KernelError, match=r"broken\.toml: not valid TOML"):
        library.entries()


def test_builtin_folder_prefers_the_shipped_copy(tmp_path: Path) -> None:
    package = tmp_path / "site" / "convcli"
    package.mkdir(parents=True)
    assert builtin_folder(package) == tmp_path / "site" / "kernels"  # source checkout layout
    (package / "_kernels").mkdir()
    assert builtin_folder(package) == package / "_kernels"  # installed wheel layout


# ----------------------------------------------------------------------------- the command


def test_cli_lists_the_library(cli) -> None:
    result = cli("kernels")
    assert result.exit_code == 0, result.stderr
    for name in ("box3", "gaussian7", "curve", "sobel-x", "haar-four", "unsharp"):
        assert name in result.stdout
    assert "1/9" in result.stdout and "1/4096" in result.stdout


def test_cli_json_lists_every_name_with_effective_matrices(cli) -> None:
    result = cli("kernels", "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    by_name = {entry["name"]: entry for entry in document}
    assert set(REQUIRED) <= set(by_name)
    assert set(by_name) == set(KernelLibrary().names())
    assert by_name["box3"]["matrix"] == [[1 / 9] * 3] * 3
    assert by_name["box3"]["scale"] == "1/9"
    assert by_name["gaussian3"]["matrix"][1][1] == 0.25
    sobel = by_name["sobel"]
    assert (sobel["kind"], sobel["x"], sobel["y"]) == ("pair", "sobel-x", "sobel-y")
    assert "matrix" not in sobel
    for entry in document:
        assert entry["description"]


def test_cli_shows_one_kernel(cli) -> None:
    result = cli("kernels", "box3")
    assert result.exit_code == 0
    assert "scale: 1/9" in result.stdout
    assert "sum: 1" in result.stdout
    assert "separable: yes" in result.stdout
    result = cli("kernels", "sharpen")
    assert "separable: no (rank 2)" in result.stdout
    assert " 5 " in result.stdout


def test_cli_shows_a_pair(cli) -> None:
    result = cli("kernels", "scharr")
    assert result.exit_code == 0
    assert "scharr-x" in result.stdout and "scharr-y" in result.stdout and "10" in result.stdout


def test_cli_one_kernel_json(cli) -> None:
    document = json.loads(cli("kernels", "unsharp", "--json").stdout)
    assert document["name"] == "unsharp"
    assert document["scale"] == "-1/256"
    assert document["matrix"][2][2] == pytest.approx(476 / 256)
    assert document["sum"] == pytest.approx(1)
    assert document["separable"] is False
    inline = json.loads(cli("kernels", "1 2 1; 2 4 2; 1 2 1", "--json").stdout)
    assert inline["rank"] == 1 and inline["sum"] == 16


def test_cli_marks_user_overrides(cli, tmp_path: Path) -> None:
    write_kernel(tmp_path, "box3", "[[5]]", description="my own box3")
    result = cli("kernels", "--kernel-path", str(tmp_path))
    assert result.exit_code == 0
    assert "overrides built-in" in result.stdout
    assert "user kernels override built-ins: box3" in result.stderr  # a note
    document = json.loads(cli("kernels", "--json", env={ENV_VAR: str(tmp_path)}).stdout)
    entry = next(e for e in document if e["name"] == "box3")
    assert entry["overrides_builtin"] and entry["matrix"] == [[5.0]]
    shown = cli("kernels", "box3", "--kernel-path", str(tmp_path))
    assert "user (overrides built-in)" in shown.stdout


def test_cli_unknown_name(cli) -> None:
    result = cli("kernels", "sobelx")
    assert result.exit_code == 2
    assert "Unknown kernel 'sobelx'. Did you mean: sobel-x" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_cli_malformed_user_file(cli, tmp_path: Path) -> None:
    (tmp_path / "oops.toml").write_text('name = "oops"\nmatrix = [[1, 2], [3]]\n')
    result = cli("kernels", "--kernel-path", str(tmp_path))
    assert result.exit_code == 2
    assert "oops.toml: kernel 'oops': rows have different lengths" in result.stderr


def test_kernels_command_does_not_import_scipy_or_pillow() -> None:
    """Start-up speed: `convcli kernels` and `convcli kernels NAME` need numpy only."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import sys\n"
        "from convcli.cli import main\n"
        "for args in (['kernels'], ['kernels', 'sobel', '--json'], ['kernels', '1/9 * 1 1 1; 1 1 1; 1 1 1']):\n"
        "    sys.argv = ['convcli', *args]\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
        "print(sorted(m for m in ('scipy', 'PIL') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_library_names_win_over_stray_files_of_the_same_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "box3").write_text("7\n")
    (tmp_path / "mykernel").write_text("1 2; 3 4\n")
    assert resolve_kernel("box3").builtin
    assert resolve_kernel("mykernel").weights.tolist() == [[1, 2], [3, 4]]


def test_long_inline_matrix_is_not_mistaken_for_a_file() -> None:
    text = "; ".join(" ".join(["1"] * 40) for _ in range(40))
    assert resolve_kernel(text).weights.shape == (40, 40)


def test_separable_factors_rebuild_the_matrix() -> None:
    assert kernel("sobel-x").separable_factors() == ([1, 2, 1], [-1, 0, 1])
    assert kernel("sobel-y").separable_factors() == ([-1, 0, 1], [1, 2, 1])
    assert kernel("gaussian7").separable_factors() == ([1, 6, 15, 20, 15, 6, 1],) * 2
    for entry in KernelLibrary().entries():
        item = entry.item
        if isinstance(item, Kernel) and item.separable:
            column, row = item.separable_factors()
            np.testing.assert_array_equal(np.outer(column, row), item.written)
    assert kernel("sharpen").separable_factors() is None  # rank 2
    assert parse_matrix("0.5 0.25; 1 0.5").separable_factors() is None  # not whole numbers


def test_cli_shows_separable_factors(cli) -> None:
    assert "column [1 2 1] × row [-1 0 1]" in cli("kernels", "sobel-x").stdout
    document = json.loads(cli("kernels", "gaussian3", "--json").stdout)
    assert document["factors"] == {"column": [1, 2, 1], "row": [1, 2, 1]}
