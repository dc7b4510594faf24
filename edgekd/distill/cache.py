"""Teacher-logit cache for offline KD: run the teacher once over the training set, read logits back.

Layout: `<root>/<key>/` where key = sha256 of (format version, teacher hash, data hash,
augmentation seed, top_k), so any change to those makes a new cache instead of reusing a stale one.
Inside: `values.npy` (+ `indices.npy`, `lse.npy` for top-k) as .npy files read with memory maps,
and `meta.json` with the key fields. `meta.json` is written last: a folder without it is unfinished.

Storage: full logits in fp16 when num_classes <= 64 or top_k is None (or top_k >= num_classes);
otherwise the top-k logits (fp16) with their class indices (int32) and each row's log-sum-exp over
ALL classes (fp32), which `get` uses to give the missing classes the exact leftover probability mass.

Sharing: the cache folder may be shared by several builds at once (one EDGEKD_CACHE). Every entry
is made in a private temp folder and published whole under the entry's lock (`fsio.cache_entry`):
a second build asking for the same entry waits, then reads the first one's; a reader never sees a
half-written entry.

Sharding: with several ranks, `write(..., rank, world_size)` writes one contiguous shard per rank
(`shard-RRRRR-of-WWWWW.*`, each via a temp file + rename) into `.<key>.shards/` beside the entry;
`open()` checks every shard is there, merges them into the entry under its lock and deletes the
shards. Call `open()` from ONE process after all ranks wrote (e.g. rank 0 after a barrier); other
processes may `open()` once meta.json exists. Row order and augmentation are fixed per 256-row
chunk, so the cache content does not depend on world_size.

`TopKSequenceCache` is the sibling for language models: a variable number of rows (answer tokens)
per sample, top-k only, in a folder named by the caller's key.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import nn

from edgekd.errors import StageError
from edgekd.fsio import cache_entry, replace_durable

CACHE_VERSION = 1
CHUNK = 256  # rows per teacher pass and per augmentation generator: part of the format (see CACHE_VERSION)
FULL_MAX_CLASSES = 64
FP16_MAX = 65504.0

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def cache_key(teacher_hash: str, data_hash: str, augment_seed: int | None, top_k: int | None) -> str:
    """sha256 hex of the fields that decide the cache content (plus the format version)."""
    fields = {"version": CACHE_VERSION, "chunk": CHUNK, "teacher": teacher_hash, "data": data_hash,
              "augment_seed": augment_seed, "top_k": top_k}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _chunk_seed(augment_seed: int, chunk: int) -> int:
    return int(np.random.SeedSequence([augment_seed, chunk]).generate_state(1, dtype=np.uint64)[0] >> 1)


def augment_chunk(xb: torch.Tensor, augment: Augment, augment_seed: int, chunk: int) -> torch.Tensor:
    """Chunk `chunk` (rows chunk*CHUNK...) of the view `augment_seed`: the pixels the cache's teacher saw."""
    return augment(xb, torch.Generator().manual_seed(_chunk_seed(int(augment_seed), chunk)))


def augmented_view(x: np.ndarray | torch.Tensor, augment: Augment, augment_seed: int) -> torch.Tensor:
    """The whole dataset as the teacher saw it when `write(..., augment=augment)` filled the cache of
    `augment_seed`: a student trained on these rows gets logits of exactly its own inputs (consistent
    teaching, without running the teacher during training)."""
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return torch.cat([augment_chunk(xt[r0:r0 + CHUNK], augment, augment_seed, r0 // CHUNK)
                      for r0 in range(0, len(xt), CHUNK)]) if len(xt) else xt.clone()


def _complete(folder: Path) -> bool:
    """A logit-cache entry is complete once its meta.json is there (written last)."""
    return (folder / "meta.json").is_file()


def _array_file(prefix: str, name: str) -> str:
    return f"{prefix}.{name}.npy" if prefix else f"{name}.npy"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from edgekd.fsio import write_json_atomic

    write_json_atomic(path, data, sort_keys=True)  # fsynced: the cache outlives power cuts


class TeacherLogitCache:
    """Teacher logits for every sample of a dataset, keyed by teacher, data, augmentation and top_k.

    `tail` (read-time, not part of the key) decides what `get` puts in the classes a top-k cache
    did not keep: "even" (default) fills them with one value chosen so that softmax at T=1 gives the
    top-k classes exactly their original probabilities and spreads the leftover mass evenly over the
    rest; "-inf" gives the rest probability 0 (softmax renormalizes over the top k; soft_label's KL
    treats 0 * log 0 as 0). Full-logit caches ignore `tail`.
    """

    def __init__(self, root: str | Path, *, teacher_hash: str, data_hash: str, augment_seed: int | None = None,
                 top_k: int | None = None, tail: Literal["even", "-inf"] = "even") -> None:
        if top_k is not None and top_k < 1:
            raise StageError(f"teacher-logit cache top_k must be >= 1, got {top_k}", hint="use None for full logits")
        if tail not in ("even", "-inf"):
            raise StageError(f"unknown tail mode {tail!r}", hint="use 'even' or '-inf'")
        self.teacher_hash, self.data_hash = teacher_hash, data_hash
        self.augment_seed, self.top_k, self.tail = augment_seed, top_k, tail
        self.key = cache_key(teacher_hash, data_hash, augment_seed, top_k)
        self.dir = Path(root) / self.key
        self.meta: dict[str, Any] | None = None
        self._values: np.ndarray | None = None
        self._indices: np.ndarray | None = None
        self._lse: np.ndarray | None = None

    # ------------------------------------------------------------------ writing

    def exists(self) -> bool:
        return _complete(self.dir)

    def _prefix(self, rank: int, world_size: int) -> str:
        return f"shard-{rank:05d}-of-{world_size:05d}"

    @property
    def staging(self) -> Path:
        """Where the ranks of a sharded write put their shards until `open()` merges them: beside the
        entry, never inside it, so the entry itself only ever appears whole (`fsio.cache_entry`)."""
        return self.dir.with_name(f".{self.key}.shards")

    @torch.no_grad()
    def write(self, teacher: nn.Module | Callable[[torch.Tensor], torch.Tensor], x: np.ndarray | torch.Tensor, *,
              rank: int = 0, world_size: int = 1, augment: Augment | None = None, batch_size: int = CHUNK) -> None:
        """Run `teacher` over this rank's share of `x` (in order) and write this rank's shard.

        With one rank the entry is made and published at once, under the entry's lock: a second
        build sharing the cache waits for it and then reuses it. With several ranks each writes its
        shard into `staging` and `open()` merges them. With an `augment_seed`,
        `augment(x_chunk, generator)` is applied to each 256-row chunk with a generator seeded from
        (augment_seed, chunk number). NaN/inf logits raise StageError naming the first bad sample's index in `x`.
        """
        if (augment is None) != (self.augment_seed is None):
            raise StageError("teacher-logit cache: augment and augment_seed must be given together",
                             hint="pass both (augmented logits) or neither (plain logits)")
        if not 0 <= rank < world_size:
            raise StageError(f"rank {rank} is outside world_size {world_size}", hint="0 <= rank < world_size")
        if self.exists():
            return
        n = len(x)
        n_chunks = -(-n // CHUNK)
        c_lo, c_hi = rank * n_chunks // world_size, (rank + 1) * n_chunks // world_size
        start, stop = min(n, c_lo * CHUNK), min(n, c_hi * CHUNK)
        if world_size == 1:
            with cache_entry(self.dir, done=_complete) as tmp:
                if tmp is None:
                    return  # another build made it while this one waited for the lock
                fmt, num_classes = self._pass(teacher, x, c_lo, c_hi, start, stop, augment, batch_size, tmp, "")
                if fmt is None:
                    raise StageError("teacher-logit cache: the dataset is empty", hint="check the training data")
                self._write_meta(tmp, fmt, n, num_classes, 1)
            return
        staging = self.staging
        staging.mkdir(parents=True, exist_ok=True)
        prefix = self._prefix(rank, world_size)
        try:
            fmt, num_classes = self._pass(teacher, x, c_lo, c_hi, start, stop, augment, batch_size, staging, prefix)
            _write_json(staging / f"{prefix}.json", {
                "rank": rank, "world_size": world_size, "start": start, "stop": stop, "num_samples": n,
                "format": fmt, "num_classes": num_classes})
        except FileNotFoundError:
            # Another build sharing the cache merged the same entry and removed the shard folder under us.
            if self.exists():
                return
            raise
        if self.exists():  # made meanwhile by another build: nobody will merge these shards
            shutil.rmtree(staging, ignore_errors=True)

    def _pass(self, teacher: nn.Module | Callable[[torch.Tensor], torch.Tensor], x: np.ndarray | torch.Tensor,
              c_lo: int, c_hi: int, start: int, stop: int, augment: Augment | None, batch_size: int,
              folder: Path, prefix: str) -> tuple[str | None, int | None]:
        """The teacher over chunks c_lo..c_hi, its arrays written into `folder` as `[prefix.]NAME.npy`
        (each through a temp file and a durable rename). Returns (format, num_classes), None when no rows."""
        n = len(x)
        module = teacher if isinstance(teacher, nn.Module) else None
        was_training = module.training if module is not None else False
        device = next(iter(module.parameters()), torch.empty(0)).device if module is not None else torch.device("cpu")
        if module is not None:
            module.eval()
        arrays: dict[str, np.ndarray] = {}
        tmp_paths: dict[str, Path] = {}
        fmt, num_classes = None, None
        try:
            for c in range(c_lo, c_hi):
                r0, r1 = c * CHUNK, min(n, (c + 1) * CHUNK)
                xb = torch.as_tensor(np.asarray(x[r0:r1]) if not isinstance(x, torch.Tensor) else x[r0:r1])
                if augment is not None:
                    xb = augment_chunk(xb, augment, int(self.augment_seed), c)  # type: ignore[arg-type]
                logits = torch.cat([teacher(xb[i:i + batch_size].to(device)).float().cpu()
                                    for i in range(0, len(xb), batch_size)])
                bad = ~torch.isfinite(logits).all(dim=1)
                if bool(bad.any()):
                    i = r0 + int(bad.nonzero()[0])
                    raise StageError(f"teacher logits contain NaN/inf at sample {i}",
                                     hint="the teacher is broken for this input: check its weights and the data")
                big = logits.abs().amax(dim=1) > FP16_MAX
                if bool(big.any()):
                    i = r0 + int(big.nonzero()[0])
                    raise StageError(f"teacher logit magnitude exceeds the fp16 range at sample {i}",
                                     hint="the teacher's logits are unreasonably large; check the teacher")
                if fmt is None:
                    num_classes = logits.shape[1]
                    fmt = self._format(num_classes)
                    k = num_classes if fmt == "full" else int(self.top_k)  # type: ignore[arg-type]
                    rows = stop - start
                    specs = {"values": (np.float16, (rows, k))}
                    if fmt == "topk":
                        specs |= {"indices": (np.int32, (rows, k)), "lse": (np.float32, (rows,))}
                    for name, (dtype, shape) in specs.items():
                        tmp_paths[name] = folder / f".{_array_file(prefix, name)}.tmp-{os.getpid()}"
                        arrays[name] = np.lib.format.open_memmap(tmp_paths[name], mode="w+", dtype=dtype, shape=shape)
                elif logits.shape[1] != num_classes:
                    raise StageError(f"teacher returned {logits.shape[1]} classes at sample {r0}, "
                                     f"{num_classes} before", hint="the teacher's output width must be fixed")
                o0, o1 = r0 - start, r1 - start
                if fmt == "full":
                    arrays["values"][o0:o1] = logits.numpy().astype(np.float16)
                else:
                    top = logits.topk(int(self.top_k), dim=1)  # type: ignore[arg-type]
                    arrays["values"][o0:o1] = top.values.numpy().astype(np.float16)
                    arrays["indices"][o0:o1] = top.indices.numpy().astype(np.int32)
                    arrays["lse"][o0:o1] = torch.logsumexp(logits, dim=1).numpy()
            for arr in arrays.values():
                arr.flush()
            arrays.clear()
            for name, tmp in tmp_paths.items():
                replace_durable(tmp, folder / _array_file(prefix, name))
        finally:
            arrays.clear()
            for tmp in tmp_paths.values():
                tmp.unlink(missing_ok=True)
            if module is not None:
                module.train(was_training)
        return fmt, num_classes

    def _format(self, num_classes: int) -> str:
        if self.top_k is None or num_classes <= FULL_MAX_CLASSES or self.top_k >= num_classes:
            return "full"
        return "topk"

    def _write_meta(self, folder: Path, fmt: str, n: int, num_classes: int | None, world_size: int) -> None:
        _write_json(folder / "meta.json", {
            "version": CACHE_VERSION, "key": self.key, "teacher_hash": self.teacher_hash, "data_hash": self.data_hash,
            "augment_seed": self.augment_seed, "top_k": self.top_k, "format": fmt, "num_samples": n,
            "num_classes": num_classes, "chunk": CHUNK, "dtype": "float16", "world_size_written": world_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    # ------------------------------------------------------------------ merging and reading

    def open(self) -> "TeacherLogitCache":
        """Merge the shards (once, under the entry's lock) and memory-map the arrays for `get`."""
        if not self.exists():
            with cache_entry(self.dir, done=_complete) as tmp:
                if tmp is not None:
                    self._merge(tmp)
        # The entry is complete from here on, so no one needs the shards any more (this build's or another's).
        shutil.rmtree(self.staging, ignore_errors=True)
        self.meta = json.loads((self.dir / "meta.json").read_text())
        self._values = np.load(self.dir / "values.npy", mmap_mode="r")
        if self.meta["format"] == "topk":
            self._indices = np.load(self.dir / "indices.npy", mmap_mode="r")
            self._lse = np.load(self.dir / "lse.npy", mmap_mode="r")
        return self

    def _merge(self, out: Path) -> None:
        """The shards in `staging` joined into the entry's arrays in `out` (the entry's temp folder)."""
        staging = self.staging
        metas = [json.loads(p.read_text()) for p in sorted(staging.glob("shard-*-of-*.json"))] if staging.is_dir() else []
        if not metas:
            raise StageError(f"teacher-logit cache {self.dir} has no shards", hint="run write() before open()")
        sizes = sorted({m["world_size"] for m in metas})
        complete = [w for w in sizes if {m["rank"] for m in metas if m["world_size"] == w} == set(range(w))]
        if not complete:
            w = sizes[-1]
            have = {m["rank"] for m in metas if m["world_size"] == w}
            raise StageError(f"teacher-logit cache {self.dir} is missing shards {sorted(set(range(w)) - have)} of {w}",
                             hint="every rank must finish write() before open()")
        w = complete[0]
        shards = sorted((m for m in metas if m["world_size"] == w), key=lambda m: m["rank"])
        n = shards[0]["num_samples"]
        pos = 0
        for m in shards:
            if m["start"] != pos or m["num_samples"] != n:
                raise StageError(f"teacher-logit cache shards of {self.dir} do not tile the dataset",
                                 hint="delete the folder and write the cache again")
            pos = m["stop"]
        filled = [m for m in shards if m["stop"] > m["start"]]
        if pos != n or not filled:
            raise StageError(f"teacher-logit cache shards of {self.dir} cover {pos} of {n} samples",
                             hint="delete the folder and write the cache again")
        fmt, num_classes = filled[0]["format"], filled[0]["num_classes"]
        names = ["values"] + (["indices", "lse"] if fmt == "topk" else [])
        for name in names:
            # Copied, not moved: the shards stay whole until the merged entry is published.
            parts = [staging / _array_file(self._prefix(m["rank"], w), name) for m in filled]
            first = np.load(parts[0], mmap_mode="r")
            merged = np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=first.dtype,
                                               shape=(n, *first.shape[1:]))
            for m, p in zip(filled, parts):
                merged[m["start"]:m["stop"]] = np.load(p, mmap_mode="r")
            merged.flush()
            del merged, first
        self._write_meta(out, fmt, n, num_classes, w)

    def __len__(self) -> int:
        return int(self._require()["num_samples"])

    @property
    def num_classes(self) -> int:
        return int(self._require()["num_classes"])

    def _require(self) -> dict[str, Any]:
        if self.meta is None:
            raise StageError("teacher-logit cache is not open", hint="call open() after write()")
        return self.meta

    def get(self, indices: np.ndarray | torch.Tensor | list[int]) -> torch.Tensor:
        """Teacher logits [B, C] (float32, CPU) for dataset sample `indices`."""
        meta = self._require()
        idx = np.asarray(indices.cpu().numpy() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)
        n = meta["num_samples"]
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise StageError(f"teacher-logit cache index out of range (cache holds {n} samples)",
                             hint="the cache was built for another dataset: its data hash should differ")
        vals = torch.from_numpy(np.asarray(self._values[idx], dtype=np.float32))  # type: ignore[index]
        if meta["format"] == "full":
            return vals
        ind = torch.from_numpy(np.asarray(self._indices[idx], dtype=np.int64))  # type: ignore[index]
        c, k = meta["num_classes"], vals.shape[1]
        if self.tail == "-inf":
            fill = torch.full((len(idx),), float("-inf"))
        else:
            lse = torch.from_numpy(np.asarray(self._lse[idx], dtype=np.float64))  # type: ignore[index]
            # leftover mass m = 1 - sum of top-k probs; (C - k) * exp(fill - lse) = m gives each missing class m/(C-k).
            kept = torch.exp(vals.double() - lse[:, None]).sum(dim=1)
            m = (1.0 - kept).clamp_min(1e-30)
            fill = (lse + torch.log(m / (c - k)))
            # Rounding (fp16 top-k vs fp32 lse) must not lift a missing class above a kept one.
            fill = torch.minimum(fill, vals.double().amin(dim=1)).float()
        out = fill[:, None].expand(len(idx), c).clone()
        out.scatter_(1, ind, vals)
        return out

    __call__ = get


class TopKSequenceCache:
    """Top-k teacher logits for a variable number of rows per sample: a language model's answer
    tokens, where one sample (prompt + answer) has as many rows as answer tokens and the vocabulary
    is too wide to keep whole.

    Layout of `folder` (named by the caller's key: teacher hash, data hash, top_k, max length):
    `values.npy` (fp16 [rows, k]), `indices.npy` (int32 [rows, k]), `offsets.npy` (int64 [n + 1]:
    sample i owns rows offsets[i]:offsets[i+1]) and `done.json`, written last. The folder is built
    under a temporary name and published whole under its lock (`fsio.cache_entry`), so a killed
    pass leaves nothing that looks done and two builds sharing the cache make it once.
    Read back with `rows(i)` or `get(indices)`; the loss (soft_label with `teacher_topk`)
    renormalizes over the k ids.
    """

    def __init__(self, folder: str | Path) -> None:
        self.dir = Path(folder)
        self._values: np.ndarray | None = None
        self._indices: np.ndarray | None = None
        self._offsets: np.ndarray | None = None

    def exists(self) -> bool:
        return (self.dir / "done.json").is_file()

    @torch.no_grad()
    def write(self, teacher_rows: Callable[[list[int]], torch.Tensor], rows_per_sample: list[int], top_k: int, *,
              batch_size: int = 8, progress: Callable[[int, int], None] | None = None) -> "TopKSequenceCache":
        """One teacher pass: `teacher_rows(sample_ids)` returns the logits [sum of their rows, vocab]
        of those samples, in order. Does nothing when the folder is already complete."""
        if top_k < 1:
            raise StageError(f"teacher-logit cache top_k must be >= 1, got {top_k}", hint="use e.g. top_k: 16")
        from edgekd import dist

        n = len(rows_per_sample)
        offsets = np.zeros(n + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(rows_per_sample)
        if dist.active():
            return self._write_sharded(teacher_rows, offsets, top_k, batch_size, progress)
        if self.exists():
            return self.open()
        # Made once under the entry's lock: a second build sharing the cache waits, then reads this one's.
        with cache_entry(self.dir, done=lambda p: (p / "done.json").is_file()) as tmp:
            if tmp is not None:
                self._fill(tmp, teacher_rows, offsets, top_k, batch_size, progress)
        return self.open()

    def _write_sharded(self, teacher_rows: Callable[[list[int]], torch.Tensor], offsets: np.ndarray, top_k: int,
                       batch_size: int, progress: Callable[[int, int], None] | None) -> "TopKSequenceCache":
        """Under torchrun: rank r runs the teacher on batches r, r+N, ... (the same batches as one process,
        so the same numbers), writes them as one shard beside the entry, and rank 0 assembles the entry
        from the shards under its lock: the cache is byte for byte the one a single process writes."""
        import uuid

        from edgekd import dist

        if dist.broadcast(self.exists()):
            return self.open()
        rank, world = dist.rank_world()
        shards = self.dir.parent / dist.broadcast(f".{self.dir.name}.shards-{uuid.uuid4().hex[:12]}")
        n = len(offsets) - 1
        starts = list(range(0, n, batch_size))
        err: BaseException | None = None
        try:
            shards.mkdir(parents=True, exist_ok=True)
            mine = starts[rank::world]
            vals, idxs = [], []
            for b, i in enumerate(mine):
                ids = list(range(i, min(n, i + batch_size)))
                v, k = self._topk(teacher_rows, ids, offsets, top_k, i)
                vals.append(v)
                idxs.append(k)
                if progress:
                    progress(min(n, (b + 1) * world * batch_size), n)
            empty = np.zeros((0, top_k))
            tmp = shards / f".shard-{rank:05d}.tmp-{os.getpid()}.npz"
            np.savez(tmp, starts=np.asarray(mine, dtype=np.int64),
                     values=np.concatenate(vals) if vals else empty.astype(np.float16),
                     indices=np.concatenate(idxs) if idxs else empty.astype(np.int32))
            os.replace(tmp, shards / f"shard-{rank:05d}.npz")
        except BaseException as e:  # noqa: BLE001 - raised on every rank by dist.agree
            err = e
        dist.agree(err)
        if rank == 0:
            try:
                with cache_entry(self.dir, done=lambda p: (p / "done.json").is_file()) as tmp:
                    if tmp is not None:
                        self._assemble(tmp, shards, offsets, top_k, world, batch_size)
            except BaseException as e:  # noqa: BLE001 - raised on every rank by dist.agree
                err = e
            finally:
                shutil.rmtree(shards, ignore_errors=True)
        dist.agree(err)
        return self.open()

    @staticmethod
    def _topk(teacher_rows: Callable[[list[int]], torch.Tensor], ids: list[int], offsets: np.ndarray, top_k: int,
              first: int) -> tuple[np.ndarray, np.ndarray]:
        logits = teacher_rows(ids).float()
        lo, hi = int(offsets[ids[0]]), int(offsets[ids[-1] + 1])
        if logits.shape[0] != hi - lo:
            raise StageError(f"teacher gave {logits.shape[0]} logit rows for samples {ids[0]}..{ids[-1]}, "
                             f"expected {hi - lo}", hint="this is a bug in edgekd")
        if not torch.isfinite(logits).all():
            raise StageError(f"teacher logits contain NaN/inf (sample {first})", hint="check the teacher weights")
        v, k = logits.topk(top_k, dim=-1)
        return v.cpu().numpy().astype(np.float16), k.cpu().numpy().astype(np.int32)

    def _assemble(self, tmp: Path, shards: Path, offsets: np.ndarray, top_k: int, world: int, batch_size: int) -> None:
        n, n_rows = len(offsets) - 1, int(offsets[-1])
        values = np.lib.format.open_memmap(tmp / "values.npy", mode="w+", dtype=np.float16, shape=(n_rows, top_k))
        indices = np.lib.format.open_memmap(tmp / "indices.npy", mode="w+", dtype=np.int32, shape=(n_rows, top_k))
        for r in range(world):
            with np.load(shards / f"shard-{r:05d}.npz") as z:
                at = 0
                for i in z["starts"].tolist():
                    lo, hi = int(offsets[i]), int(offsets[min(n, i + batch_size)])
                    values[lo:hi] = z["values"][at:at + hi - lo]
                    indices[lo:hi] = z["indices"][at:at + hi - lo]
                    at += hi - lo
        values.flush()
        indices.flush()
        del values, indices
        np.save(tmp / "offsets.npy", offsets)
        (tmp / "done.json").write_text(json.dumps({"rows": n_rows, "top_k": top_k, "examples": n}))

    def _fill(self, tmp: Path, teacher_rows: Callable[[list[int]], torch.Tensor], offsets: np.ndarray, top_k: int,
              batch_size: int, progress: Callable[[int, int], None] | None) -> None:
        n, n_rows = len(offsets) - 1, int(offsets[-1])
        values = np.lib.format.open_memmap(tmp / "values.npy", mode="w+", dtype=np.float16, shape=(n_rows, top_k))
        indices = np.lib.format.open_memmap(tmp / "indices.npy", mode="w+", dtype=np.int32, shape=(n_rows, top_k))
        for i in range(0, n, batch_size):
            ids = list(range(i, min(n, i + batch_size)))
            lo, hi = int(offsets[ids[0]]), int(offsets[ids[-1] + 1])
            values[lo:hi], indices[lo:hi] = self._topk(teacher_rows, ids, offsets, top_k, i)
            if progress:
                progress(ids[-1] + 1, n)
        values.flush()
        indices.flush()
        del values, indices
        np.save(tmp / "offsets.npy", offsets)
        (tmp / "done.json").write_text(json.dumps({"rows": n_rows, "top_k": top_k, "examples": n}))

    def open(self) -> "TopKSequenceCache":
        if not self.exists():
            raise StageError(f"teacher-logit cache {self.dir} is not complete", hint="run write() before open()")
        self._values = np.load(self.dir / "values.npy", mmap_mode="r")
        self._indices = np.load(self.dir / "indices.npy", mmap_mode="r")
        self._offsets = np.load(self.dir / "offsets.npy")
        return self

    def __len__(self) -> int:
        if self._offsets is None:
            raise StageError("teacher-logit cache is not open", hint="call open() after write()")
        return len(self._offsets) - 1

    def rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample i's rows: (values float32 [r, k], token ids int64 [r, k])."""
        n = len(self)
        if not 0 <= i < n:
            raise StageError(f"teacher-logit cache index {i} out of range (cache holds {n} samples)",
                             hint="the cache was built for other data: its key should differ")
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])  # type: ignore[index]
        return (np.asarray(self._values[a:b], dtype=np.float32),  # type: ignore[index]
                np.asarray(self._indices[a:b], dtype=np.int64))  # type: ignore[index]

    def get(self, indices: np.ndarray | torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of samples `indices`, concatenated in that order: (values [R, k], ids [R, k])."""
        idx = indices.tolist() if isinstance(indices, (np.ndarray, torch.Tensor)) else list(indices)
        vs, ks = zip(*(self.rows(int(i)) for i in idx)) if idx else ((), ())
        if not vs:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        return torch.from_numpy(np.concatenate(vs)), torch.from_numpy(np.concatenate(ks))


class AugmentedViews:
    """Consistent teaching from the cache: `views` augmented copies of the training set, each with the
    teacher's logits of exactly its pixels cached once (augmentation seeds 0..views-1). Epoch e trains
    on view e mod views. Called as `epoch_inputs` by the trainer; only the current view is in memory.

    Without `caches` (the labels-only control) it yields the same views and no logits, so the control
    sees the very inputs the distilled student saw.
    """

    def __init__(self, x: np.ndarray | torch.Tensor, augment: Augment, views: int,
                 caches: list[TeacherLogitCache] | None = None) -> None:
        if views < 1:
            raise StageError(f"augmented views must be >= 1, got {views}", hint="set distill.teacher_cache.views >= 1")
        if caches is not None and [c.augment_seed for c in caches] != list(range(views)):
            raise StageError("augmented views: cache i must hold augmentation seed i",
                             hint="build the caches with augment_seed=0..views-1")
        self.x, self.augment, self.views, self.caches = x, augment, views, caches
        self._current: tuple[int, torch.Tensor] | None = None

    def view(self, v: int) -> torch.Tensor:
        if self._current is None or self._current[0] != v:
            self._current = (v, augmented_view(self.x, self.augment, v))
        return self._current[1]

    def __call__(self, epoch: int) -> tuple[torch.Tensor, Callable[[np.ndarray], torch.Tensor] | None]:
        v = epoch % self.views
        return self.view(v), (self.caches[v].get if self.caches is not None else None)
