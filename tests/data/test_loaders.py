import gzip

import numpy as np
import pytest

from edgekd.config import DataConfig
from edgekd.data import load
from edgekd.data.idx import read_idx
from edgekd.errors import DataError

from tests.conftest import needs_fmnist


def _write_idx(path, arr, gz=True):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def _fake_dataset(d, n_train=50, n_test=20):
    rng = np.random.default_rng(0)
    _write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (n_train, 28, 28)))
    _write_idx(d / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train))
    _write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (n_test, 28, 28)))
    _write_idx(d / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test))


def test_idx_roundtrip_and_split(tmp_path):
    _fake_dataset(tmp_path)
    s = load(DataConfig(kind="fashion-mnist", path=str(tmp_path), val_fraction=0.2))
    assert s.x_train.shape == (40, 1, 28, 28) and s.x_val.shape == (10, 1, 28, 28) and s.x_test.shape == (20, 1, 28, 28)
    assert s.x_train.dtype == np.float32
    # val is carved from train: no sample appears in both (raw rows are distinct with high probability)
    tr = {r.tobytes() for r in s.x_train}
    assert not any(r.tobytes() in tr for r in s.x_val)


def test_env_var_folder(tmp_path, monkeypatch):
    _fake_dataset(tmp_path)
    monkeypatch.setenv("EDGEKD_DATA", str(tmp_path))
    monkeypatch.setattr("edgekd.data.idx.DEBIAN_DIR", tmp_path / "nowhere")
    assert load(DataConfig(kind="fashion-mnist")).x_test.shape[0] == 20


def test_missing_dataset_names_install_command(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEKD_DATA", raising=False)
    with pytest.raises(DataError) as e:
        load(DataConfig(kind="fashion-mnist", path=str(tmp_path / "empty")))
    assert e.value.exit_code == 2 and "apt-get install -y dataset-fashion-mnist" in e.value.hint


def test_corrupt_and_truncated_idx(tmp_path):
    p = tmp_path / "x.gz"
    _write_idx(p, np.zeros((4, 28, 28)))
    raw = gzip.open(p).read()
    gzip.open(p, "wb").write(raw[:-10])
    with pytest.raises(DataError, match="header promises"):
        read_idx(p)
    q = tmp_path / "y"
    q.write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(DataError, match="magic"):
        read_idx(q)
    r = tmp_path / "z.gz"
    r.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(r)


def test_label_fraction_and_digits():
    s = load(DataConfig(kind="digits", label_fraction=0.1))
    assert s.labeled is not None and abs(s.labeled.mean() - 0.1) < 0.01
    assert s.x_train.shape[1] == 64 and s.num_classes == 10


@needs_fmnist
def test_debian_fashion_mnist_subsets():
    s = load(DataConfig(kind="fashion-mnist", train_size=1000, test_size=300))
    assert len(s.x_train) == 1000 and len(s.x_test) == 300
    assert abs(float(s.x_train.mean())) < 0.1 and abs(float(s.x_train.std()) - 1) < 0.1
