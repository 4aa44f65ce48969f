"""Fixtures shared by the node tests."""
from __future__ import annotations

import pytest

from tests.support.nodeproc import test_model_pack


@pytest.fixture(scope="session")
def pack(tmp_path_factory):
    """The model pack a test node runs: models/default, or the stand-in pack when it is absent."""
    return test_model_pack(tmp_path_factory.mktemp("pack"))
