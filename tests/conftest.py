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


class _KilledAfterCheckpoint:
    """Replaces the trainer's save_checkpoint: the n-th save completes, then the 'process dies'
    (KeyboardInterrupt). `epochs` lists the epochs saved; `restore()` puts the real save back."""

    def __init__(self, monkeypatch, n: int) -> None:
        from edgekd.distill import trainer

        self._mp, self._real, self._n, self.epochs = monkeypatch, trainer.save_checkpoint, n, []
        monkeypatch.setattr(trainer, "save_checkpoint", self._save)

    def _save(self, path, payload) -> None:
        self._real(path, payload)
        self.epochs.append(payload["epoch"])
        if len(self.epochs) == self._n:
            raise KeyboardInterrupt

    def restore(self) -> None:
        from edgekd.distill import trainer

        self._mp.setattr(trainer, "save_checkpoint", self._real)


@pytest.fixture
def kill_after_checkpoint(monkeypatch):
    """kill_after_checkpoint(n): the run dies right after writing its n-th checkpoint."""
    return lambda n: _KilledAfterCheckpoint(monkeypatch, n)


@pytest.fixture()
def readme_numbers():
    """benchmarks/readme_numbers.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_numbers", ROOT / "benchmarks" / "readme_numbers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
