"""One "build" of tests/test_shared_cache.py: writes the entries two builds sharing EDGEKD_CACHE
race on (a teacher-logit entry, a sharded one, a top-k sequence entry, a generations file) with
tiny fake teachers, and counts the teacher work it did.

Run as `python tests/shared_cache_worker.py TAG PEERS OUT.json` (EDGEKD_CACHE names the cache);
PEERS is how many workers run at once. Before each entry every worker drops a `calling-ENTRY-TAG`
marker; a teacher, once it runs, waits until all PEERS markers of its entry exist, so the other
worker has asked for the same entry before the first one finishes it: the race is certain, not a
matter of timing.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

N = 300  # two 256-row chunks: a sharded write gives each of two ranks one chunk
CLASSES = 80  # above FULL_MAX_CLASSES, so top_k=7 stores the top-k format (values, indices, lse)


def wait_for_peers(markers: Path, entry: str, peers: int) -> None:
    deadline = time.monotonic() + 60
    while len(list(markers.glob(f"calling-{entry}-*"))) < peers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the other worker never asked for {entry}")
        time.sleep(0.01)
    time.sleep(0.2)  # the other worker is now past its marker: let it reach the entry's lock


class Teacher:
    """Logits of row i are a fixed random table's row i: every worker computes the same values."""

    def __init__(self, markers: Path, entry: str, peers: int) -> None:
        self.table = torch.from_numpy(np.random.default_rng(0).normal(size=(N, CLASSES)).astype(np.float32))
        self.markers, self.entry, self.peers, self.calls = markers, entry, peers, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.calls == 0:
            wait_for_peers(self.markers, self.entry, self.peers)
        self.calls += 1
        return self.table[x[:, 0].long()]


class CharTok:
    """A tokenizer of single characters (no chat template): enough for generate_answers."""

    chat_template = None
    eos_token_id, pad_token_id, unk_token_id = 3, 0, None

    def convert_tokens_to_ids(self, token: str) -> int:
        return 3

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [10 + ord(c) % 26 for c in text]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True,
               clean_up_tokenization_spaces: bool | None = None) -> str:  # as a Hugging Face tokenizer takes them
        return "".join(chr(97 + (i - 10) % 26) for i in ids if i >= 10)


class EchoLM:
    """'Answers' with the prompt's last tokens reversed, then the stop token."""

    def __init__(self, markers: Path, peers: int) -> None:
        from types import SimpleNamespace

        self.generation_config = SimpleNamespace(eos_token_id=3)
        self.markers, self.peers, self.prompts = markers, peers, 0

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, **_: object):
        if self.prompts == 0:
            wait_for_peers(self.markers, "generations", self.peers)
        self.prompts += len(input_ids)
        new = torch.zeros((len(input_ids), max_new_tokens), dtype=torch.long)
        for j, row in enumerate(input_ids):
            ans = row[attention_mask[j].bool()].flip(0)[: max_new_tokens - 1].tolist() + [3]
            new[j, : len(ans)] = torch.tensor(ans)
        return torch.cat([input_ids, new], dim=1)


def main(tag: str, peers: int, out: Path) -> None:
    from edgekd.distill.cache import TeacherLogitCache, TopKSequenceCache
    from edgekd.llm.generate import generate_answers
    from edgekd.pipeline import default_cache_dir

    root = default_cache_dir()
    markers = root.parent / "markers"
    markers.mkdir(parents=True, exist_ok=True)
    x = np.stack([np.arange(N), np.zeros(N)], 1).astype(np.float32)
    calls: dict[str, int] = {}

    def ask(entry: str) -> None:
        (markers / f"calling-{entry}-{tag}").touch()

    # a one-rank entry: made once, under its lock
    teacher = Teacher(markers, "logits", peers)
    ask("logits")
    TeacherLogitCache(root / "logits", teacher_hash="t", data_hash="d", top_k=7).write(teacher, x)
    calls["logits"] = teacher.calls

    # a two-rank entry: each worker writes both shards, then merges; only one merge is published
    teacher = Teacher(markers, "sharded", peers)
    ask("sharded")
    c = TeacherLogitCache(root / "logits", teacher_hash="t2", data_hash="d", top_k=7)
    for rank in (0, 1):
        c.write(teacher, x, rank=rank, world_size=2)
    c.open()

    # a language model's top-k rows: ragged rows per sample
    teacher = Teacher(markers, "topk", peers)
    ask("topk")
    rows_per_sample = [1 + i % 4 for i in range(40)]
    starts = np.concatenate([[0], np.cumsum(rows_per_sample)])

    def teacher_rows(ids: list[int]) -> torch.Tensor:
        rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in ids])
        return teacher(torch.stack([rows.float(), torch.zeros(len(rows))], 1))

    TopKSequenceCache(root / "llm-logits" / "k").write(teacher_rows, rows_per_sample, 5, batch_size=4)
    calls["topk"] = teacher.calls

    # the teacher's answers, appended per batch to one shared file
    lm = EchoLM(markers, peers)
    ask("generations")
    prompts = [{"id": f"p{i}", "prompt": f"prompt number {i} about {'xyz' * (i % 3)}"} for i in range(10)]
    (root / "generations").mkdir(parents=True, exist_ok=True)
    rows = generate_answers(lm, CharTok(), prompts, root / "generations" / "g.jsonl",
                            {"teacher": "t", "max_new_tokens": 6, "batch_size": 3})
    calls["generations"] = lm.prompts
    out.write_text(json.dumps({"calls": calls, "answers": [r["answer"] for r in rows]}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
