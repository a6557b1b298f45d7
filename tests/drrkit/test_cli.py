"""The drrkit command line (typer's CliRunner): outputs, geometry, bad input, atomic writes."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from drrkit import MU_WATER, DrrkitError, circular_orbit, render
from drrkit import cli as dcli
from drrkit.images import to_uint8
from drrkit.io import load_geometry
from drrkit.phantoms import default_phantom, torso_ellipsoids, voxelize

runner = CliRunner()
render_module = importlib.import_module("drrkit.render")  # `drrkit.render` is the function
SMALL = ["--views", "2", "--size", "32", "--pixel-spacing", "16"]


def invoke(*args):
    return runner.invoke(dcli.app, [str(a) for a in args])


def assert_bad_input(result, *fragments):
    """Exit status 2, one line 'error: ...' on stderr, no traceback anywhere."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def bead():
    """The phantom's marker bead (its densest ellipsoid)."""
    return max(torso_ellipsoids(), key=lambda e: e.mu)


def rotation(axis, degrees):
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    a = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


@pytest.fixture(scope="module")
def oblique_ct(tmp_path_factory):
    """The torso with a very dense bead, stored oblique and anisotropic, in mu and in HU."""
    ellipsoids = [dataclasses.replace(e, mu=40 * MU_WATER) if e.mu == bead().mu else e
                  for e in torso_ellipsoids()]
    volume = voxelize(ellipsoids, (40, 44, 48), (7.5, 7.0, 8.5),
                      direction=rotation((1, 1, 1), 25.0), supersample=2)
    folder = tmp_path_factory.mktemp("ct")
    volume.save(folder / "mu.nrrd")
    hu = (volume.data / MU_WATER - 1.0) * 1000.0
    volume.with_data(hu.astype(np.float32)).save(folder / "hu.nii.gz")
    return folder, volume


# ---------------------------------------------------------------------- help and import cost
def test_help_lists_the_commands_and_imports_nothing_heavy():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "render" in result.output and "info" in result.output
    code = ("import sys, drrkit.cli; "
            "print(sorted(m for m in ('numba', 'SimpleITK', 'PIL', 'torch', 'cupy', 'rich.progress')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert invoke("--version").output.startswith("drrkit ")


# ---------------------------------------------------------------------- render
def test_render_phantom_writes_images_and_geometry(tmp_path):
    out = tmp_path / "out"
    result = invoke("render", "--phantom", "--out", out, *SMALL)
    assert result.exit_code == 0, result.output
    drr = np.load(out / "drr.npy")
    assert drr.dtype == np.float32 and drr.shape == (2, 32, 32)
    assert np.all(np.isfinite(drr)) and drr.max() > 1.0
    data = json.loads((out / "geometry.json").read_text())
    assert (data["height"], data["width"]) == (32, 32)
    assert data["pixel_spacing"] == [16.0, 16.0]
    assert [v["angle_deg"] for v in data["views"]] == [0.0, 180.0]
    assert data["image"]["shape"] == [2, 32, 32]
    assert data["render"]["backend"] in ("cpu", "cuda")

    # the same geometry as the library's orbit around the phantom, and the same pixels
    phantom = default_phantom()
    expected = circular_orbit(phantom, views=2, size=32, pixel_spacing=16.0)
    geometry = load_geometry(out / "geometry.json")
    np.testing.assert_allclose(geometry.projection_matrices, expected.projection_matrices,
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(drr, render(phantom, expected, backend="cpu"), rtol=1e-5,
                               atol=1e-6)

    # view 0 (source anterior): the bead (patient's left, superior) is top right, and
    # brighter than the mirror-image spot on the patient's right
    matrix = np.asarray(data["views"][0]["projection_matrix"])
    h = matrix @ np.append(bead().center, 1.0)
    col, row = h[:2] / h[2]
    assert col > 16 and row < 16
    c, r = round(col), round(row)
    assert drr[0, r, c] > drr[0, r, 31 - c] + 0.3

    # PNGs: 8-bit, upright as stored, windowed as geometry.json says
    from PIL import Image

    window = data["display"]["window"]
    png = np.asarray(Image.open(out / "view_000.png"))
    assert png.dtype == np.uint8 and png.shape == (32, 32)
    np.testing.assert_array_equal(png, to_uint8(drr[0], window))
    assert png[r, c] > png[r, 31 - c]
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.mode == "L" and sheet.width >= 2 * 128
    assert sorted(p.name for p in out.iterdir()) == [
        "contact_sheet.png", "drr.npy", "geometry.json", "view_000.png", "view_001.png"]


def test_render_bone_gain_renders_the_enhanced_volume(tmp_path):
    out = tmp_path / "bone"
    result = invoke("render", "--phantom", "--out", out, "--bone-gain", "8",
                    "--bone-threshold", "150", "--no-png", *SMALL)
    assert result.exit_code == 0, result.output
    from drrkit import enhance_bone

    phantom = default_phantom()
    expected = render(enhance_bone(phantom, 150.0, 8.0),
                      circular_orbit(phantom, views=2, size=32, pixel_spacing=16.0),
                      backend="cpu")
    np.testing.assert_allclose(np.load(out / "drr.npy"), expected, rtol=1e-5, atol=1e-6)
    meta = json.loads((out / "geometry.json").read_text())["render"]
    assert (meta["bone_gain"], meta["bone_threshold_hu"]) == (8.0, 150.0)
    bad = invoke("render", "--phantom", "--out", tmp_path / "x", "--bone-gain", "0.5", *SMALL)
    assert bad.exit_code == 2 and "bone enhancement needs" in bad.output
    assert not (tmp_path / "x").exists()


def test_projection_matrices_put_the_bead_on_the_image_peak(oblique_ct, tmp_path):
    folder, volume = oblique_ct
    out = tmp_path / "out"
    args = ["--views", "3", "--size", "48", "--pixel-spacing", "12", "--start-angle", "20",
            "--backend", "cpu"]  # the CPU reference: tolerances below are float32 ones
    result = invoke("render", folder / "mu.nrrd", "--input-units", "mu", "--out", out, *args)
    assert result.exit_code == 0, result.output
    drr = np.load(out / "drr.npy")
    data = json.loads((out / "geometry.json").read_text())
    np.testing.assert_allclose(data["orbit"]["isocenter"], volume.center, atol=1e-9)
    for k, view in enumerate(data["views"]):
        h = np.asarray(view["projection_matrix"]) @ np.append(bead().center, 1.0)
        expected = h[:2] / h[2]
        row, col = np.unravel_index(np.argmax(drr[k]), drr[k].shape)
        assert np.abs([col - expected[0], row - expected[1]]).max() <= 1.0, (k, col, row)
        # sub-pixel peak: centroid of the excess over the local median in a 5x5 window
        window = drr[k, row - 2:row + 3, col - 2:col + 3]
        excess = np.maximum(window - np.median(window), 0.0)
        rows, cols = np.mgrid[row - 2:row + 3, col - 2:col + 3]
        peak = np.array([(excess * cols).sum(), (excess * rows).sum()]) / excess.sum()
        assert np.hypot(*(peak - expected)) < 0.5, (k, peak, expected)

    # the same CT stored in HU renders the same line integrals with the default units
    out_hu = tmp_path / "hu"
    result = invoke("render", folder / "hu.nii.gz", "--out", out_hu, "--no-png", *args)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(out_hu / "drr.npy"), drr, rtol=1e-4, atol=1e-4)
    assert sorted(p.name for p in out_hu.iterdir()) == ["drr.npy", "geometry.json"]


def test_progress_bar_path_renders_in_chunks_with_the_same_result(tmp_path, monkeypatch):
    monkeypatch.setattr(dcli, "PROGRESS_PIXELS", 0)
    monkeypatch.setattr(dcli, "CHUNK_PIXELS", 32 * 32)  # one view per chunk
    calls = []
    real = render

    def counting(volume, geometry, **kwargs):
        calls.append(len(geometry))
        return real(volume, geometry, **kwargs)

    monkeypatch.setattr(render_module, "render", counting)
    result = invoke("render", "--phantom", "--out", tmp_path / "a", "--views", "3",
                    "--size", "32", "--pixel-spacing", "16", "--backend", "cpu")
    assert result.exit_code == 0, result.output
    assert calls == [1, 1, 1]
    assert "3/3" in result.stderr  # rich progress: views done / K
    phantom = default_phantom()
    expected = real(phantom, circular_orbit(phantom, views=3, size=32, pixel_spacing=16.0),
                    backend="cpu")
    np.testing.assert_allclose(np.load(tmp_path / "a" / "drr.npy"), expected, rtol=1e-5,
                               atol=1e-6)


def test_rerun_replaces_outputs_and_removes_stale_views(tmp_path, oblique_ct):
    folder, _ = oblique_ct
    out = tmp_path / "out"
    ct = folder / "mu.nrrd"
    common = ["--input-units", "mu", "--size", "16", "--pixel-spacing", "32", "-q"]
    assert invoke("render", ct, "--out", out, "--views", "3", *common).exit_code == 0
    (out / "mine.txt").write_text("keep me")
    assert invoke("render", ct, "--out", out, "--views", "2", *common).exit_code == 0
    assert np.load(out / "drr.npy").shape == (2, 16, 16)
    assert sorted(p.name for p in out.iterdir()) == [
        "contact_sheet.png", "drr.npy", "geometry.json", "mine.txt", "view_000.png",
        "view_001.png"]
    assert invoke("render", ct, "--out", out, "--views", "2", "--no-png", *common).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["drr.npy", "geometry.json", "mine.txt"]


# ---------------------------------------------------------------------- info
def test_info_reports_an_oblique_anisotropic_ct(tmp_path):
    import SimpleITK as sitk

    values = np.linspace(-1000, 1500, 8 * 10 * 12).reshape(12, 10, 8).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    a = np.deg2rad(30.0)
    image.SetDirection([np.cos(a), -np.sin(a), 0, np.sin(a), np.cos(a), 0, 0, 0, 1])
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    result = invoke("info", tmp_path / "ct.nrrd")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "8 x 10 x 12 voxels" in text
    assert "0.7 x 0.9 x 2.5 mm" in text
    assert "5.6 x 9 x 30 mm" in text
    assert "LPS" in text and "oblique by 30.0 deg" in text
    assert "(10, -20, 30) mm" in text
    assert "HU range:" in text and "-1000 .. 1500" in text
    assert "16-bit signed integer" in text

    flipped = sitk.GetImageFromArray(values)
    flipped.SetDirection([-1, 0, 0, 0, -1, 0, 0, 0, 1])  # as a RAS-stored NIfTI reads
    sitk.WriteImage(flipped, str(tmp_path / "ras.nii.gz"))
    result = invoke("info", tmp_path / "ras.nii.gz")
    assert result.exit_code == 0, result.output
    assert "RAS" in result.stdout and "axis-aligned" in result.stdout


def test_orientation_code():
    assert dcli.orientation_code(np.eye(3)) == ("LPS", 0.0)
    code, angle = dcli.orientation_code(np.diag([-1.0, 1.0, -1.0]) @ rotation((0, 0, 1), 10))
    assert code == "RPI" and angle == pytest.approx(10.0)


def test_info_on_the_phantom_and_bad_input(tmp_path):
    result = invoke("info", "--phantom")
    assert result.exit_code == 0 and "128 x 128 x 128 voxels" in result.stdout
    assert_bad_input(invoke("info", tmp_path / "missing.nii.gz"), "no such file")
    assert_bad_input(invoke("info"), "--phantom")


# ---------------------------------------------------------------------- bad input
def _write_image(path, array, vector=False):
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path))


def _bad_files(folder):
    """name -> (path, expected fragment of the error)."""
    import SimpleITK as sitk

    files = {}
    (folder / "empty.nii.gz").write_bytes(b"")
    files["empty"] = (folder / "empty.nii.gz", "empty")
    (folder / "corrupt.nii.gz").write_bytes(np.random.default_rng(1).bytes(600))
    files["corrupt"] = (folder / "corrupt.nii.gz", "cannot read")
    _write_image(folder / "good.nii.gz", np.zeros((4, 4, 4), np.int16))
    data = (folder / "good.nii.gz").read_bytes()
    (folder / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    files["truncated"] = (folder / "truncated.nii.gz", "cannot read")
    (folder / "text.mha").write_text("this is not an image\n")
    files["text"] = (folder / "text.mha", "cannot read")
    _write_image(folder / "flat.nii.gz", np.zeros((5, 6), np.float32))
    files["2-D"] = (folder / "flat.nii.gz", "2-D image")
    series = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))] * 2)
    sitk.WriteImage(series, str(folder / "series.nii.gz"))
    files["4-D"] = (folder / "series.nii.gz", "4-D image")
    _write_image(folder / "vector.nrrd", np.zeros((3, 4, 5, 3), np.float32), vector=True)
    files["vector"] = (folder / "vector.nrrd", "scalar")
    files["missing"] = (folder / "missing.nii.gz", "no such file")
    (folder / "no_dicom").mkdir()
    files["folder"] = (folder / "no_dicom", "no DICOM series")
    return files


BAD_FILES = ["empty", "corrupt", "truncated", "text", "2-D", "4-D", "vector", "missing",
             "folder"]


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files_give_one_line_errors_and_no_output(tmp_path, name):
    path, fragment = _bad_files(tmp_path)[name]
    out = tmp_path / "out"
    assert_bad_input(invoke("render", path, "--out", out, *SMALL), fragment)
    assert not out.exists()
    if name not in ("folder",):
        assert_bad_input(invoke("info", path), fragment)


@pytest.mark.parametrize(
    "options, fragment",
    [
        (["--size", "0"], "detector size"),
        (["--size", "-5"], "detector size"),
        (["--pixel-spacing", "-1"], "pixel spacing must be positive"),
        (["--pixel-spacing", "0"], "pixel spacing must be positive"),
        (["--pixel-spacing", "nan"], "pixel spacing must be positive"),
        (["--views", "0"], "number of views"),
        (["--views", "-2"], "number of views"),
        (["--input-units", "xyz"], "unknown units 'xyz'"),
        (["--sad", "1000", "--sid", "1000"], "0 < sad < sid"),
        (["--sad", "1200"], "0 < sad < sid"),
        (["--sad", "0"], "0 < sad < sid"),
        (["--step", "0"], "sampling step"),
        (["--step", "-0.5"], "sampling step"),
        (["--step", "inf"], "sampling step"),
        (["--backend", "tpu"], "unknown backend 'tpu'"),
        (["--nan", "ignore"], "unknown nan policy"),
        (["--arc", "nan"], "finite"),
        (["--size", "1000000", "--views", "1000"], "memory"),
    ],
)
def test_bad_options_give_one_line_errors(tmp_path, options, fragment):
    out = tmp_path / "out"
    assert_bad_input(invoke("render", "--phantom", "--out", out, "--views", "1", "--size", "8",
                            *options), fragment)
    assert not out.exists()


def test_bad_combinations(tmp_path, oblique_ct):
    folder, _ = oblique_ct
    assert_bad_input(invoke("render", "--out", tmp_path / "o"), "--phantom")
    assert_bad_input(invoke("render", folder / "mu.nrrd", "--phantom", "--out", tmp_path / "o"),
                     "not both")
    (tmp_path / "file").write_text("x")
    assert_bad_input(invoke("render", "--phantom", "--out", tmp_path / "file"), "not a folder")
    assert (tmp_path / "file").read_text() == "x"
    from drrkit.render import cuda_available

    if not cuda_available():
        assert_bad_input(invoke("render", "--phantom", "--out", tmp_path / "o", "--backend",
                                "cuda"), "cuda")
    # a usage error (not a number) is click's job: status 2, no traceback
    result = invoke("render", "--phantom", "--out", tmp_path / "o", "--views", "ten")
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.parametrize("name", ["nan.mha", "nan.nii.gz"])
def test_nan_voxels_warn_and_render_finite_or_are_refused(tmp_path, name):
    values = np.full((10, 12, 14), 0.0, np.float32)  # HU 0 = water
    values[4:6, 5:7, 6:8] = np.nan
    values[0, 0, 0] = np.inf
    path = tmp_path / name  # MetaImage keeps NaN; SimpleITK's NIfTI reader makes it 0
    _write_image(path, values)
    out = tmp_path / "out"
    result = invoke("render", path, "--out", out, "--views", "2", "--size", "16",
                    "--pixel-spacing", "4")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "9 non-finite voxels" in warnings[0]
    drr = np.load(out / "drr.npy")
    assert np.all(np.isfinite(drr)) and drr.max() > 0
    assert_bad_input(invoke("render", path, "--out", tmp_path / "o2", "--nan", "raise"),
                     "non-finite")
    assert not (tmp_path / "o2").exists()
    result = invoke("info", path)
    assert result.exit_code == 0 and "9 voxels (NaN or inf)" in result.stdout


# ---------------------------------------------------------------------- atomic outputs
def test_a_failed_render_or_write_leaves_no_partial_output(tmp_path, oblique_ct, monkeypatch):
    folder, _ = oblique_ct
    ct = folder / "mu.nrrd"
    args = ["--input-units", "mu", "--views", "2", "--size", "16", "--pixel-spacing", "32"]

    def failing_render(*_, **__):
        raise DrrkitError("simulated render failure")

    with monkeypatch.context() as patch:
        patch.setattr(render_module, "render", failing_render)
        assert_bad_input(invoke("render", ct, "--out", tmp_path / "a", *args), "simulated")
    assert not (tmp_path / "a").exists()

    def failing_png(path, image):
        raise OSError(28, "No space left on device", str(path))

    out = tmp_path / "b"
    with monkeypatch.context() as patch:
        patch.setattr("drrkit.images.save_png", failing_png)
        assert_bad_input(invoke("render", ct, "--out", out, *args), "No space left on device")
    assert not out.exists()

    # an earlier run's files stay whole when a later run fails while writing
    assert invoke("render", ct, "--out", out, *args).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def failing_save(path, array):
        raise OSError(28, "No space left on device", str(path))

    with monkeypatch.context() as patch:
        patch.setattr("drrkit.io.save_npy", failing_save)
        assert_bad_input(invoke("render", ct, "--out", out, *args[:-4], "--size", "8"),
                         "No space left")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
