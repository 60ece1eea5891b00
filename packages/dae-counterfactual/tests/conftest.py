"""Makes dae_test_helpers importable under pytest's importlib import mode."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dae_test_helpers import tiny_config


@pytest.fixture
def tiny():
    return tiny_config()
