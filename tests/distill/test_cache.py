"""TeacherLogitCache: fp16 round trip, top-k reconstruction, keys, NaN detection, sharding, augmentation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.distill.cache import CHUNK, TeacherLogitCache, cache_key
from edgekd.errors import StageError

N = 2 * CHUNK + 88  # three chunks, the last one partial


class Lookup(nn.Module):
    """A 'teacher' whose logits for input row [i] are table[i]: every cached value is known exactly."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0].round().long()] + x[:, 1:2]  # column 1: an augmentation offset


def inputs(n: int = N) -> np.ndarray:
    return np.stack([np.arange(n), np.zeros(n)], 1).astype(np.float32)


def cache(tmp_path, **kw) -> TeacherLogitCache:
    args = {"teacher_hash": "t", "data_hash": "d"} | kw
    return TeacherLogitCache(tmp_path, **args)


def test_full_logits_round_trip_exact(tmp_path):
    rng = np.random.default_rng(0)
    table = torch.tensor(rng.integers(-1000, 1000, (N, 10)) / 64.0, dtype=torch.float32)
    assert torch.equal(table.half().float(), table)  # the premise: these values are exact in fp16
    c = cache(tmp_path, top_k=5)  # 10 classes <= 64: stored full even with top_k
    teacher = Lookup(table).train()
    c.write(teacher, inputs())
    assert teacher.training  # the teacher's mode is restored
    c.open()
    assert c.meta["format"] == "full" and len(c) == N and c.num_classes == 10
    idx = np.array([0, 5, N - 1, 300, 5])
    got = c.get(idx)
    assert got.dtype == torch.float32 and torch.equal(got, table[idx])
    # Arbitrary float logits come back as their fp16 rounding, exactly.
    table2 = torch.randn(N, 10) * 5
    c2 = cache(tmp_path, teacher_hash="t2")
    c2.write(Lookup(table2), inputs())
    assert torch.equal(c2.open().get(np.arange(N)), table2.half().float())
    meta = json.loads((c2.dir / "meta.json").read_text())
    assert {meta[k] for k in ("teacher_hash", "data_hash", "key")} == {"t2", "d", c2.key}
    assert meta["top_k"] is None and meta["augment_seed"] is None
    assert sorted(p.name for p in c2.dir.iterdir()) == ["meta.json", "values.npy"]  # no shards or temp files left


def test_topk_keeps_topk_exact_and_spreads_leftover_mass(tmp_path):
    rng = np.random.default_rng(1)
    C, k = 100, 5
    # Distinct values per row, so which classes are "top k" is never a tie.
    table = torch.tensor(np.stack([rng.choice(1600, C, replace=False) - 800 for _ in range(N)]) / 128.0,
                         dtype=torch.float32)
    assert torch.equal(table.half().float(), table)
    c = cache(tmp_path, top_k=k)
    c.write(Lookup(table), inputs())
    c.open()
    assert c.meta["format"] == "topk"
    idx = np.array([3, 400, N - 1])
    got = c.get(idx)
    assert got.shape == (3, C)
    orig = table[idx]
    top = orig.topk(k, dim=1)
    assert torch.equal(got.gather(1, top.indices), top.values)  # top-k logits exact
    p_orig, p_got = torch.softmax(orig.double(), 1), torch.softmax(got.double(), 1)
    torch.testing.assert_close(p_got.gather(1, top.indices), p_orig.gather(1, top.indices), rtol=1e-6, atol=1e-9)
    tail = torch.ones_like(p_got, dtype=torch.bool).scatter(1, top.indices, False)
    tail_got = p_got[tail].view(3, C - k)
    torch.testing.assert_close(tail_got.sum(1), p_orig[tail].view(3, C - k).sum(1), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(tail_got, tail_got[:, :1].expand_as(tail_got))  # spread evenly
    assert torch.equal(got.argmax(1), orig.argmax(1))
    # The -inf tail: probability only on the top k, renormalized.
    ninf = cache(tmp_path, top_k=k, tail="-inf").open().get(idx)
    assert torch.equal(ninf.gather(1, top.indices), top.values)
    assert torch.isneginf(ninf[tail]).all()
    torch.testing.assert_close(torch.softmax(ninf, 1).gather(1, top.indices), torch.softmax(top.values, 1))


def test_key_changes_with_every_field(tmp_path):
    base = {"teacher_hash": "t", "data_hash": "d", "augment_seed": None, "top_k": None}
    k0 = cache_key(**base)
    assert cache_key(**base) == k0 and len(k0) == 64
    for field, value in (("teacher_hash", "t'"), ("data_hash", "d'"), ("augment_seed", 0), ("top_k", 8)):
        assert cache_key(**(base | {field: value})) != k0, field
    assert cache(tmp_path).dir != cache(tmp_path, top_k=8).dir


def test_nan_names_first_bad_sample_and_leaves_nothing(tmp_path):
    table = torch.randn(N, 10)
    table[300, 4] = float("nan")
    table[301, 0] = float("inf")
    c = cache(tmp_path)
    with pytest.raises(StageError, match=r"sample 300\b"):
        c.write(Lookup(table), inputs())
    assert not c.exists()
    assert not list(c.dir.glob("*tmp*")) and not list(c.dir.glob("*.npy"))
    with pytest.raises(StageError, match="no shards"):
        c.open()


def test_sharded_write_merges_to_the_single_process_result(tmp_path):
    table = torch.randn(N, 80)
    single = cache(tmp_path / "one", top_k=7)
    single.write(Lookup(table), inputs())
    want_full = single.open().get(np.arange(N))
    for world in (2, 5):  # 5 ranks over 3 chunks: two ranks have no rows
        c = cache(tmp_path / f"w{world}", top_k=7)
        for rank in range(world - 1):
            c.write(Lookup(table), inputs(), rank=rank, world_size=world)
        with pytest.raises(StageError, match=f"missing shards \\[{world - 1}\\]"):
            c.open()
        c.write(Lookup(table), inputs(), rank=world - 1, world_size=world)
        assert torch.equal(c.open().get(np.arange(N)), want_full)
        assert json.loads((c.dir / "meta.json").read_text())["world_size_written"] == world
        assert not list(c.dir.glob("shard-*")) and not c.staging.exists()  # shards live beside the entry, merged then gone


def _noise_column(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A seeded 'augmentation' whose effect on the lookup teacher's logits is plain to see."""
    x = x.clone()
    x[:, 1] = torch.rand(len(x), generator=gen)
    return x


def test_augmentation_is_seeded_per_chunk(tmp_path):
    table = torch.zeros(N, 4)

    a = cache(tmp_path / "a", augment_seed=3)
    a.write(Lookup(table), inputs(), augment=_noise_column)
    b = cache(tmp_path / "b", augment_seed=3)
    b.write(Lookup(table), inputs(), augment=_noise_column, rank=0, world_size=2)
    b.write(Lookup(table), inputs(), augment=_noise_column, rank=1, world_size=2)
    va, vb = a.open().get(np.arange(N)), b.open().get(np.arange(N))
    assert torch.equal(va, vb)  # same content whatever the number of ranks
    assert float(va.std()) > 0.1  # the augmentation really changed the logits
    other = cache(tmp_path / "c", augment_seed=4)
    other.write(Lookup(table), inputs(), augment=_noise_column)
    assert not torch.equal(other.open().get(np.arange(N)), va)
    with pytest.raises(StageError, match="together"):
        cache(tmp_path / "d", augment_seed=3).write(Lookup(table), inputs())
    with pytest.raises(StageError, match="together"):
        cache(tmp_path / "d").write(Lookup(table), inputs(), augment=_noise_column)


def test_augmented_view_is_what_the_teacher_saw(tmp_path):
    """Consistent teaching from the cache: the view rebuilt for the student is, row for row, the input
    whose logits the cache holds (also across a chunk boundary and with several ranks)."""
    from edgekd.distill.cache import augmented_view

    table = torch.randn(N, 4)

    c = cache(tmp_path / "v", augment_seed=7)
    c.write(Lookup(table), inputs(), augment=_noise_column, rank=0, world_size=2)
    c.write(Lookup(table), inputs(), augment=_noise_column, rank=1, world_size=2)
    view = augmented_view(inputs(), _noise_column, 7)
    assert view.shape == inputs().shape and not torch.equal(view, torch.as_tensor(inputs()))
    expect = Lookup(table)(view)
    assert torch.allclose(c.open().get(np.arange(N)), expect, atol=2e-3)  # fp16 storage
    assert not torch.equal(augmented_view(inputs(), _noise_column, 8), view)


def test_get_out_of_range_and_unopened(tmp_path):
    c = cache(tmp_path)
    with pytest.raises(StageError, match="not open"):
        c.get([0])
    c.write(Lookup(torch.zeros(N, 3)), inputs())
    c.open()
    with pytest.raises(StageError, match="out of range"):
        c.get([N])
    assert c(torch.tensor([1, 2])).shape == (2, 3)  # callable like the trainer's teacher_logits(idx)


# --------------------------------------------------------------------------- ragged top-k (language models)


def test_sequence_topk_cache_round_trip_ragged_rows(tmp_path):
    from edgekd.distill.cache import TopKSequenceCache

    rows_per_sample = [3, 1, 4, 2, 5]
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(r, 50, generator=g) for r in rows_per_sample]
    calls = []

    def teacher_rows(ids):
        calls.append(list(ids))
        return torch.cat([logits[i] for i in ids])

    folder = tmp_path / "k"
    c = TopKSequenceCache(folder).write(teacher_rows, rows_per_sample, top_k=4, batch_size=2)
    assert calls == [[0, 1], [2, 3], [4]] and len(c) == 5
    assert not list(tmp_path.glob("*.tmp-*"))  # built under a temp name, renamed into place
    for i, lg in enumerate(logits):
        v, k = c.rows(i)
        top = lg.topk(4, dim=-1)
        assert v.shape == (rows_per_sample[i], 4)
        assert np.allclose(v, top.values.numpy(), atol=1e-2)  # fp16 storage
        assert (k == top.indices.numpy()).all()
    v, k = c.get(torch.tensor([3, 0]))  # concatenated in the order asked
    assert v.shape == (5, 4) and (k[:2].numpy() == logits[3].topk(4).indices.numpy()).all()
    # a finished folder is reused, the teacher not run again
    calls.clear()
    TopKSequenceCache(folder).write(teacher_rows, rows_per_sample, top_k=4)
    assert calls == []
    with pytest.raises(StageError, match="out of range"):
        c.rows(5)


def test_sequence_topk_cache_refuses_nan_and_leaves_nothing_done(tmp_path):
    from edgekd.distill.cache import TopKSequenceCache

    def bad(ids):
        out = torch.zeros(len(ids), 10)
        out[0, 0] = float("nan")
        return out

    c = TopKSequenceCache(tmp_path / "k")
    with pytest.raises(StageError, match="NaN"):
        c.write(bad, [1, 1], top_k=2)
    assert not c.exists()
