"""vertebra's own error type, caught wherever drrkit's is."""

import pytest

from drrkit.errors import DrrkitError
from vertebra import labels
from vertebra.errors import VertebraError


def test_vertebra_raises_its_own_error_which_is_a_drrkit_error():
    assert issubclass(VertebraError, DrrkitError)
    with pytest.raises(VertebraError, match="X9"):
        labels.by_name("X9")
    with pytest.raises(DrrkitError):  # callers that catch drrkit's error keep working
        labels.by_name("X9")
