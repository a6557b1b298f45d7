"""Fixtures shared by drrkit tests."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_rotation(seed) -> np.ndarray:
    """(3, 3) uniformly random proper rotation."""
    return Rotation.random(random_state=seed).as_matrix()
