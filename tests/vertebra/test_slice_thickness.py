"""``benchmarks/slice_thickness.py``'s re-slicing: exact slab means in any orientation."""

from __future__ import annotations

import numpy as np
import pytest

import drrkit


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("slice_thickness")


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_linear_ramp_along_z_keeps_its_values_at_the_slab_centres(script, axis):
    # index axis ``axis`` runs along world z; the CT is a linear ramp in world z
    direction = np.roll(np.eye(3), axis - 2, axis=1)
    assert np.argmax(np.abs(direction[2])) == axis
    spacing = np.array([1.0, 1.5, 2.0])
    vol = drrkit.Volume(np.zeros((8, 9, 10), np.float32), spacing, np.array([3.0, -2.0, 5.0]),
                        direction)
    assert vol.slice_axis == axis
    index = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape_xyz], indexing="ij"), -1)
    z = (vol.voxel_to_world(index.reshape(-1, 3))[:, 2]).reshape(vol.shape_xyz)
    vol = vol.with_data(np.ascontiguousarray(z.transpose(2, 1, 0), dtype=np.float32))
    thick = 3.0 * spacing[axis]
    out = script.reslice(vol, thick)
    assert out.spacing[axis] == thick
    assert out.shape_xyz[axis] == int(vol.shape_xyz[axis] * spacing[axis] // thick)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape_xyz], indexing="ij"), -1)
    want = out.voxel_to_world(index.reshape(-1, 3))[:, 2].reshape(out.shape_xyz)
    # a slab's mean of a linear ramp is its value at the slab's centre
    np.testing.assert_allclose(out.data.transpose(2, 1, 0), want, atol=1e-4)
    with pytest.raises(ValueError, match="below the slice spacing"):
        script.reslice(vol, 0.5 * spacing[axis])
