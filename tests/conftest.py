import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Threads per test process: the cores shared out among pytest-xdist workers (`make test` runs one worker
# per core). Builds that the tests start inherit it. Two workers of 2 torch threads each on 2 cores spin
# against each other (measured: twice the CPU time of a serial run); one thread each runs side by side.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = str(max(1, (os.cpu_count() or 1) // _WORKERS))
if _WORKERS > 1:
    for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_v] = _THREADS
else:
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


def benchmark_script(name: str):
    """benchmarks/NAME.py as a module (the benchmarks are scripts, not part of the package), with benchmarks/ on
    sys.path for the `_common` they import."""
    bench = ROOT / "benchmarks"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def readme_numbers():
    """benchmarks/readme_numbers.py as a module."""
    return benchmark_script("readme_numbers")



# pytest-xdist (`make test` runs one worker per core): the tests of a file stay on one worker (module
# fixtures are made once), and files whose tests share a session fixture form one group (a session
# fixture is made once per worker): the fashion-cnn quick builds with their teacher cache, and the
# dequantized SmolLM2 teacher. xdist's own `--dist loadgroup` cannot do this under pytest 9 (it marks
# groups by rewriting `item._nodeid`, which pytest 9's nodeid no longer reads), so the grouping is a
# scheduler of our own (below).
SHARED_GROUPS = {
    "tests/e2e/test_cli.py": "fashion-e2e",
    "tests/e2e/test_device_cli.py": "fashion-e2e",
    "tests/e2e/test_llm_cli.py": "smollm2",
    "tests/e2e/test_llm_ascend_cli.py": "smollm2",
    "tests/llm/test_llm.py": "smollm2",
    "tests/export/test_ascend_lm.py": "smollm2",
}
# The longest groups start first, so none starts last and leaves one worker finishing alone
# (from `--durations`: each of these takes 25-250 s; most other files take a few seconds).
HEAVY_FIRST = ("fashion-e2e", "smollm2", "tests/e2e/test_byo_cli.py", "tests/e2e/test_text_cli.py",
               "tests/e2e/test_shipped_teacher_cli.py", "tests/test_init_lm.py", "tests/export/test_mobile_lm.py",
               "tests/export/test_mobile.py",
               "tests/distill/test_multitask.py", "tests/distill/test_ddp.py")


def xdist_group_of(nodeid: str) -> str:
    """The worker group of a test: its file's shared group, else its file."""
    path = nodeid.split("::", 1)[0]
    return SHARED_GROUPS.get(path, path)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if _WORKERS > 1:  # a worker's collection order is the order the groups are handed out
        rank = {g: i for i, g in enumerate(HEAVY_FIRST)}
        items.sort(key=lambda it: rank.get(xdist_group_of(it.nodeid), len(rank)))  # stable: file order otherwise


if importlib.util.find_spec("xdist") is not None:
    def pytest_xdist_make_scheduler(config, log):
        from xdist.scheduler import LoadScopeScheduling

        class GroupScheduling(LoadScopeScheduling):
            """Whole groups (xdist_group_of) to a worker, in collection order."""

            def _split_scope(self, nodeid: str) -> str:
                return xdist_group_of(nodeid)

        config.option.loadscopereorder = False
        return GroupScheduling(config, log)
