import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("EDGEKD_CACHE", str(d))
    return d


needs_fmnist = pytest.mark.skipif(not FMNIST.is_file(), reason="dataset-fashion-mnist not installed (make data)")


@pytest.fixture(scope="session")
def llm_cache(tmp_path_factory):
    """One EDGEKD_CACHE for the language-model tests: SmolLM2's GGUF is dequantized once per session."""
    return tmp_path_factory.mktemp("llmcache")
