"""Shared pytest settings for every package's tests and the integration tests."""

import os

import pytest

# Before anything imports timm or huggingface_hub: a missing-weights call fails at once, offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("MEDIMG_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or MEDIMG_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _shared_weights_home(tmp_path_factory):
    """Named weight sources (imagenet-lite0) are converted once per test session, into a temporary folder."""
    if "MEDIMG_WEIGHTS_HOME" not in os.environ:
        os.environ["MEDIMG_WEIGHTS_HOME"] = str(tmp_path_factory.mktemp("medimg-weights"))


@pytest.fixture(autouse=True)
def _isolated_medimg_home(tmp_path, monkeypatch):
    """Split files and caches of each test go to its own temporary folder, never to ~/.cache."""
    monkeypatch.setenv("MEDIMG_HOME", str(tmp_path / "medimg-home"))
