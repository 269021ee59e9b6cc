import os

import pytest
import torch

# Two CPU cores on CI: keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def isolated_cache(tmp_path_factory, monkeypatch):
    """DigitScenes scenes and pre-trained backbones cached under this session's tmp dir, not ~/.cache."""
    monkeypatch.setenv("NNI_SPARSEMASK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sm-cache"))
