"""Shared test set-up: an isolated cache directory and TORCH_HOME for the whole test session."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory):
    """Keep tests away from the user's caches (template, demo cohorts, torchvision weights)."""
    old = {k: os.environ.get(k) for k in ("MRI_SLICE_TRANSFER_CACHE", "TORCH_HOME")}
    os.environ["MRI_SLICE_TRANSFER_CACHE"] = str(tmp_path_factory.mktemp("mst_cache"))
    os.environ["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch_home"))
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
