"""Volumes: exact geometry through file formats, HU conversion, resampling."""

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import drrkit
from drrkit import DrrkitError, Volume, load_volume
from tests.drrkit.conftest import random_rotation

# a GPU machine may lack SimpleITK (its wheel is too large to carry there)
sitk = pytest.importorskip("SimpleITK")


def oblique_volume(rng) -> Volume:
    """Anisotropic spacing, a rotated and flipped direction, values in HU."""
    direction = random_rotation(7) @ np.diag([1.0, -1.0, -1.0])
    data = rng.integers(-1000, 2000, size=(5, 6, 7)).astype(np.float32)
    return Volume(data, spacing=[0.7, 0.9, 2.5], origin=[-12.5, 30.0, 4.25], direction=direction)


def test_index_world_round_trip(rng):
    vol = oblique_volume(rng)
    index = rng.random((20, 3)) * 5
    np.testing.assert_allclose(vol.world_to_voxel(vol.voxel_to_world(index)), index, atol=1e-10)
    np.testing.assert_allclose(vol.index_to_world @ vol.world_to_index, np.eye(4), atol=1e-12)
    # voxel (i, j, k) is data[k, j, i]
    i, j, k = 3, 1, 4
    world = vol.origin + vol.direction @ (vol.spacing * [i, j, k])
    np.testing.assert_allclose(vol.voxel_to_world([i, j, k]), world)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_file_formats_keep_geometry(tmp_path, rng, suffix):
    vol = oblique_volume(rng)
    path = tmp_path / f"ct{suffix}"
    vol.save(path)
    back = load_volume(path, units="mu")
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-5)
    np.testing.assert_array_equal(back.data, vol.data)


def test_dicom_series_folder(tmp_path, rng):
    vol = Volume(rng.integers(-1000, 1500, size=(4, 8, 9)).astype(np.int16),
                 spacing=[0.8, 0.8, 2.0], origin=[-100, -90, 50])
    image = vol.to_sitk()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        sl = image[:, :, z]
        sl.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z)))))
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        sl.SetMetaData("0020|0013", str(z))
        sl.SetMetaData("0008|0060", "CT")
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
        sl.SetMetaData("0028|1052", "0")
        sl.SetMetaData("0028|1053", "1")
        writer.SetFileName(str(tmp_path / f"slice{z:03d}.dcm"))
        writer.Execute(sl)
    back = load_volume(tmp_path, units="hu")
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=1e-5)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-3)
    np.testing.assert_allclose(back.data, drrkit.hu_to_mu(vol.data), rtol=1e-6)


def test_hu_to_mu():
    mu = drrkit.hu_to_mu(np.array([-1000.0, -2000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(mu, [0, 0, drrkit.MU_WATER, 2 * drrkit.MU_WATER], rtol=1e-6)
    assert mu.dtype == np.float32
    np.testing.assert_allclose(drrkit.hu_to_mu(np.array([0.0]), mu_water=0.02), [0.02])


def test_enhance_bone_steepens_ct_numbers_above_the_threshold(rng):
    hu = rng.uniform(-1000, 3000, size=(5, 6, 7)).astype(np.float32)
    vol = oblique_volume(rng).with_data(drrkit.hu_to_mu(hu))
    out = drrkit.enhance_bone(vol, threshold_hu=200.0, gain=8.0)
    expected_hu = np.where(hu > 200.0, 200.0 + 8.0 * (hu - 200.0), hu)
    np.testing.assert_allclose(out.data, drrkit.hu_to_mu(expected_hu), rtol=1e-5, atol=1e-7)
    assert out.data.dtype == np.float32 and out.data.shape == vol.data.shape
    np.testing.assert_array_equal(out.index_to_world, vol.index_to_world)
    np.testing.assert_array_equal(vol.data, drrkit.hu_to_mu(hu))  # input untouched
    np.testing.assert_array_equal(drrkit.enhance_bone(vol, gain=1.0).data, vol.data)
    for bad in ({"gain": 0.5}, {"gain": np.nan}, {"threshold_hu": np.inf}):
        with pytest.raises(DrrkitError, match="bone enhancement"):
            drrkit.enhance_bone(vol, **bad)


@given(st.floats(-500, 1500), st.floats(1.0, 20.0),
       st.lists(st.floats(0.0, 0.2), min_size=2, max_size=2))
def test_enhance_bone_is_continuous_and_increasing(threshold, gain, pair):
    mu = np.sort(np.array(pair, dtype=np.float32))
    vol = Volume(mu.reshape(1, 1, 2), spacing=[1.0, 1.0, 1.0])
    out = drrkit.enhance_bone(vol, threshold, gain).data.ravel()
    assert out[0] <= out[1]
    assert np.all(out >= mu * (1 - 1e-6))  # never darker
    # the slope is 1 below the threshold and gain above it, nothing jumps
    assert out[1] - out[0] <= gain * (mu[1] - mu[0]) * (1 + 1e-5) + 1e-7


def test_drr_of_an_enhanced_bone_cube_is_closed_form():
    """A uniform 1000 HU cube: every ray sees mu'/mu times the plain line integral."""
    mu = float(drrkit.hu_to_mu(np.array([1000.0]))[0])
    vol = Volume(np.full((20, 20, 20), mu, np.float32), spacing=[2.0, 2.0, 2.0],
                 origin=[-19.0, -19.0, -19.0])
    g = drrkit.circular_orbit(vol, views=3, sad=400, sid=800, size=16, pixel_spacing=2.0)
    plain = drrkit.render(vol, g, backend="cpu")
    enhanced = drrkit.render(drrkit.enhance_bone(vol, threshold_hu=200.0, gain=8.0), g,
                             backend="cpu")
    ratio = (200.0 + 8.0 * 800.0 + 1000.0) / 2000.0  # mu'/mu with mu = mu_w (1 + HU/1000)
    hit = plain > 1e-3
    assert hit.sum() > 100
    np.testing.assert_allclose(enhanced[hit], ratio * plain[hit], rtol=1e-4)
    # the centre ray crosses the 40 mm cube: 40 mm x the enhanced attenuation
    np.testing.assert_allclose(enhanced[0, 7:9, 7:9], 40.0 * ratio * mu, rtol=2e-2)


def test_nan_voxels_warn_and_become_air(tmp_path):
    data = np.zeros((3, 3, 3), np.float32)
    data[1, 1, 1] = np.nan
    Volume(data).save(tmp_path / "nan.nrrd")
    with pytest.warns(UserWarning, match="non-finite"):
        vol = load_volume(tmp_path / "nan.nrrd")
    assert np.isfinite(vol.data).all() and vol.data[1, 1, 1] == 0
    with pytest.raises(DrrkitError, match="non-finite"):
        load_volume(tmp_path / "nan.nrrd", nan="raise")


def _big_endian_nifti(path, data):
    """A minimal big-endian float32 NIfTI-1 file (SimpleITK writes little-endian only)."""
    import struct

    head = bytearray(352)
    struct.pack_into(">i", head, 0, 348)  # sizeof_hdr
    struct.pack_into(">8h", head, 40, 3, *data.shape[::-1], 1, 1, 1, 1)  # dim
    struct.pack_into(">2h", head, 70, 16, 32)  # datatype float32, bitpix
    struct.pack_into(">8f", head, 76, *[1.0] * 8)  # pixdim
    struct.pack_into(">2f", head, 108, 352.0, 1.0)  # vox_offset, scl_slope
    head[344:348] = b"n+1\0"
    path.write_bytes(bytes(head) + data.astype(">f4").tobytes())


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii", "big-endian.nii", "ct.mha"])
def test_nan_voxels_are_found_in_every_format(tmp_path, name):
    """SimpleITK's NIfTI reader turns NaN and inf into 0 -- water, in HU -- without a word;
    load_volume finds them in the file all the same and applies its ``nan`` policy."""
    data = np.full((4, 5, 6), 100.0, np.float32)  # HU
    data[1, 2, 3], data[2, 0, 1], data[3, 4, 5] = np.nan, np.inf, -np.inf
    path = tmp_path / name
    if name.startswith("big"):
        _big_endian_nifti(path, data)
    else:
        Volume(data).save(path)
    read = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert np.isfinite(read).all() == (".nii" in name)  # what SimpleITK shows
    with pytest.warns(UserWarning, match=re.escape(f"{path} has 3 non-finite voxels")):
        vol = load_volume(path)
    assert vol.data[1, 2, 3] == vol.data[2, 0, 1] == vol.data[3, 4, 5] == 0  # air, not water
    assert vol.data[0, 0, 0] == pytest.approx(drrkit.hu_to_mu(np.float32(100.0)))
    with pytest.raises(DrrkitError, match=f"^{re.escape(str(path))} has 3 non-finite voxels$"):
        load_volume(path, nan="raise")
    finite = tmp_path / ("finite-" + name)
    if name.startswith("big"):
        _big_endian_nifti(finite, np.nan_to_num(data))
    else:
        Volume(np.nan_to_num(data)).save(finite)
    load_volume(finite, nan="raise")  # nothing to find


def test_bad_inputs(tmp_path):
    with pytest.raises(DrrkitError, match="no such file"):
        load_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(DrrkitError, match="empty"):
        load_volume(tmp_path / "empty.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image at all" * 10)
    with pytest.raises(DrrkitError, match="cannot read"):
        load_volume(tmp_path / "junk.nii.gz")
    sitk.WriteImage(sitk.Image(4, 5, sitk.sitkFloat32), str(tmp_path / "flat.nrrd"))
    with pytest.raises(DrrkitError, match="2-D"):
        load_volume(tmp_path / "flat.nrrd")
    with pytest.raises(DrrkitError, match="units"):
        load_volume(tmp_path / "flat.nrrd", units="kelvin")
    with pytest.raises(DrrkitError, match="spacing"):
        Volume(np.zeros((2, 2, 2)), spacing=[1, 0, 1])
    with pytest.raises(DrrkitError, match="3-D"):
        Volume(np.zeros((2, 2)))


def test_resample_isotropic_keeps_world_positions(rng):
    # a linear ramp in world x is reproduced exactly by linear resampling, inside the box
    direction = random_rotation(3)
    vol = Volume(np.zeros((12, 10, 8), np.float32), spacing=[1.5, 0.5, 2.0], origin=[1, 2, 3],
                 direction=direction)
    k, j, i = np.meshgrid(*(np.arange(n) for n in vol.data.shape), indexing="ij")
    world = vol.voxel_to_world(np.stack([i, j, k], -1).astype(float))
    vol = vol.with_data((world[..., 0] * 0.1).astype(np.float32))
    iso = drrkit.resample_isotropic(vol, 1.0)
    np.testing.assert_allclose(iso.spacing, 1.0)
    np.testing.assert_allclose(iso.direction, direction, atol=1e-6)
    np.testing.assert_allclose(iso.center, vol.center, atol=1e-6)
    kk, jj, ii = np.meshgrid(*(np.arange(1, n - 1) for n in iso.data.shape), indexing="ij")
    idx = np.stack([ii, jj, kk], -1).astype(float)
    inner = vol.world_to_voxel(iso.voxel_to_world(idx))
    ok = np.all((inner >= 0) & (inner <= np.array(vol.shape_xyz) - 1), axis=-1)
    expected = iso.voxel_to_world(idx)[..., 0] * 0.1
    got = iso.data[1:-1, 1:-1, 1:-1]
    np.testing.assert_allclose(got[ok], expected[ok], atol=1e-4)


def test_crop_keeps_each_voxel_at_its_world_position():
    # closed form: voxel (i, j, k) of the crop is voxel (i, j, k) + start of the volume
    vol = oblique_volume(np.random.default_rng(4))
    part = vol.crop([1, 2, 3], [6, 5, 5])
    assert part.shape_xyz == (5, 3, 2)
    np.testing.assert_array_equal(part.data, vol.data[3:5, 2:5, 1:6])
    np.testing.assert_allclose(part.voxel_to_world([0, 0, 0]), vol.voxel_to_world([1, 2, 3]))
    np.testing.assert_allclose(part.spacing, vol.spacing)
    np.testing.assert_allclose(part.direction, vol.direction)
    whole = vol.crop([-4, 0, 0], [99, 99, 99])  # clipped to the volume, as slices are
    np.testing.assert_array_equal(whole.data, vol.data)
    np.testing.assert_allclose(whole.origin, vol.origin)
    with pytest.raises(DrrkitError, match="keeps no voxel"):
        vol.crop([2, 0, 0], [2, 6, 5])


@given(st.lists(st.integers(0, 7), min_size=3, max_size=3),
       st.lists(st.integers(1, 8), min_size=3, max_size=3), st.integers(0, 2 ** 32 - 1))
def test_crop_voxels_match_the_volume_at_the_same_world_point(start, size, seed):
    vol = oblique_volume(np.random.default_rng(seed))
    stop = np.minimum(np.add(start, size), vol.shape_xyz)
    if np.any(stop <= np.minimum(start, vol.shape_xyz)):
        with pytest.raises(DrrkitError):
            vol.crop(start, stop)
        return
    part = vol.crop(start, stop)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        ijk = np.array([rng.integers(0, n) for n in part.shape_xyz])
        back = np.rint(vol.world_to_voxel(part.voxel_to_world(ijk))).astype(int)
        assert part.data[ijk[2], ijk[1], ijk[0]] == vol.data[back[2], back[1], back[0]]
