"""Sequence-level KD: SFT on the teacher's answers plus token-level KD on cached top-k logits.

A training example is the chat-formatted prompt followed by the teacher's answer and the end
token; only answer positions carry loss. The teacher's logits at those positions are computed once
and cached as top-k (fp16 values, int32 indices) keyed by teacher hash + answers hash + k, so
training never runs the 135M teacher again. The KD term is KL(softmax(v/T) over the teacher's
top-k || the student's full-vocabulary softmax at T, gathered at those k ids) · T²: it moves the
student's mass onto the teacher's candidates in the teacher's proportions.

Evaluation, on held-out prompts the student never trained on: perplexity of the teacher's answers
under the model, and next-token agreement (the model's argmax equals the teacher's answer token,
teacher forcing). The control is the same student trained on the prompts' raw text alone.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekd.errors import StageError


@dataclass
class Example:
    ids: list[int]        # prompt + answer (+ end token)
    start: int            # first answer position (tokens before it are prompt)


def build_examples(tok, rows: list[dict], max_length: int, end_id: int) -> list[Example]:
    from edgekd.llm.generate import chat_ids

    out = []
    for r in rows:
        if not r["answer"]:
            continue
        p = chat_ids(tok, r["prompt"])
        a = tok(r["answer"], add_special_tokens=False)["input_ids"] + [end_id]
        ids = (p + a)[:max_length]
        if len(ids) > len(p):
            out.append(Example(ids, len(p)))
    return out


def raw_text_examples(tok, prompts: list[dict], max_length: int, end_id: int) -> list[Example]:
    """The control's data: each prompt's raw text as a language-modelling sample (loss on all tokens)."""
    out = []
    for p in prompts:
        ids = (tok(p["prompt"], add_special_tokens=False)["input_ids"] + [end_id])[:max_length]
        if len(ids) > 1:
            out.append(Example(ids, 1))
    return out


def _batch(examples: list[Example], pad: int):
    import torch

    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for j, e in enumerate(examples):  # right padding: positions line up with the cached logits
        n = len(e.ids)
        ids[j, :n] = torch.tensor(e.ids)
        mask[j, :n] = 1
        labels[j, e.start:n] = ids[j, e.start:n]
    return ids, mask, labels


def answer_positions(e: Example) -> tuple[int, int]:
    """Logit rows [lo, hi) that predict the answer tokens e.ids[start:]."""
    return e.start - 1, len(e.ids) - 1


class TopKLogits:
    """Memory-mapped top-k teacher logits for every answer position of every example."""

    def __init__(self, folder: Path) -> None:
        self.values = np.load(folder / "values.npy", mmap_mode="r")
        self.indices = np.load(folder / "indices.npy", mmap_mode="r")
        self.offsets = np.load(folder / "offsets.npy")

    def rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return np.asarray(self.values[a:b], dtype=np.float32), np.asarray(self.indices[a:b], dtype=np.int64)


def cache_teacher_logits(teacher, examples: list[Example], folder: Path, top_k: int, pad: int, batch_size: int = 8,
                         progress: Callable[[int, int], None] | None = None) -> TopKLogits:
    """One teacher pass over the examples; writes values/indices/offsets atomically into `folder`."""
    import torch

    if (folder / "done.json").is_file():
        return TopKLogits(folder)
    n_rows = sum(hi - lo for lo, hi in map(answer_positions, examples))
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    values = np.lib.format.open_memmap(tmp / "values.npy", mode="w+", dtype=np.float16, shape=(n_rows, top_k))
    indices = np.lib.format.open_memmap(tmp / "indices.npy", mode="w+", dtype=np.int32, shape=(n_rows, top_k))
    offsets = np.zeros(len(examples) + 1, dtype=np.int64)
    row = 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        with torch.no_grad():
            logits = answer_logits(teacher, chunk, pad).float()
        if not torch.isfinite(logits).all():
            raise StageError(f"teacher logits contain NaN/inf (example {i})", hint="check the teacher weights")
        v, k = logits.topk(top_k, dim=-1)
        values[row:row + len(v)] = v.numpy().astype(np.float16)
        indices[row:row + len(v)] = k.numpy().astype(np.int32)
        for j, e in enumerate(chunk):
            lo, hi = answer_positions(e)
            offsets[i + j + 1] = offsets[i + j] + hi - lo
        row += len(v)
        if progress:
            progress(min(i + batch_size, len(examples)), len(examples))
    values.flush()
    indices.flush()
    del values, indices
    np.save(tmp / "offsets.npy", offsets)
    (tmp / "done.json").write_text(json.dumps({"rows": row, "top_k": top_k, "examples": len(examples)}))
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return TopKLogits(folder)


def topk_kd_loss(student_logits, t_values, t_indices, temperature: float):
    """KL(teacher top-k at T || student at T) · T², averaged over rows. Shapes [R, V], [R, k], [R, k]."""
    import torch
    import torch.nn.functional as F

    t = float(temperature)
    pt = F.softmax(t_values / t, dim=-1)
    log_ps = F.log_softmax(student_logits / t, dim=-1).gather(-1, t_indices)
    kl = (pt * (torch.log(pt.clamp_min(1e-12)) - log_ps)).sum(-1)
    return kl.mean() * t * t


def answer_logits(model, examples: list[Example], pad: int):
    """Logits at the answer positions only, [rows, vocab]: the decoder runs on every token, the
    vocabulary projection (49k columns, most of a small LM's compute) only where loss is taken."""
    import torch

    ids, mask, _ = _batch(examples, pad)
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    rows = torch.cat([hidden[j, lo:hi] for j, e in enumerate(examples) for lo, hi in [answer_positions(e)]], 0)
    return model.get_output_embeddings()(rows)


def evaluate(model, examples: list[Example], pad: int, batch_size: int = 16) -> dict[str, float]:
    """Perplexity of the answers and next-token agreement (argmax == answer token), teacher forcing."""
    import torch
    import torch.nn.functional as F

    nll, hits, n = 0.0, 0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            rows = answer_logits(model, chunk, pad).float()
            target = torch.cat([torch.tensor(e.ids[e.start:]) for e in chunk])
            nll += F.cross_entropy(rows, target, reduction="sum").item()
            hits += int((rows.argmax(-1) == target).sum())
            n += len(target)
    if n == 0:
        raise StageError("no held-out answer tokens to evaluate", hint="raise generate.held_out or the prompt count")
    return {"perplexity": math.exp(nll / n), "agreement": hits / n, "tokens": n}


def train(student, examples: list[Example], cache: TopKLogits | None, val: list[Example], cfg: dict[str, Any],
          pad: int, log: Callable[[str], None] | None = None, progress: Callable[[int, int, dict], None] | None = None
          ) -> dict[str, Any]:
    """AdamW + cosine with warm-up, grad clipping; loss = hard·CE(answer tokens) + soft·KD(top-k);
    the best epoch on held-out agreement is kept. cfg: epochs, batch_size, lr, weight_decay,
    grad_clip, seed, hard, soft, temperature."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(int(cfg["seed"]))
    rng = np.random.default_rng(int(cfg["seed"]))
    opt = torch.optim.AdamW(student.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    bs, epochs = int(cfg["batch_size"]), int(cfg["epochs"])
    steps = max(1, epochs * math.ceil(len(examples) / bs))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    soft, hard = float(cfg["soft"]), float(cfg["hard"])
    if soft > 0 and cache is None:
        raise StageError("soft-label KD needs the teacher's cached logits", hint="this is a bug in edgekd")
    history, best, best_state, step = [], -1.0, None, 0
    for epoch in range(1, epochs + 1):
        student.train()
        t0 = time.perf_counter()
        order = rng.permutation(len(examples))
        sums = {"hard_label": 0.0, "soft_label": 0.0}
        for b in range(0, len(order), bs):
            idx = order[b:b + bs]
            chunk = [examples[i] for i in idx]
            rows = answer_logits(student, chunk, pad)
            target = torch.cat([torch.tensor(e.ids[e.start:]) for e in chunk])
            loss = torch.zeros(())
            if hard > 0:
                ce = F.cross_entropy(rows.float(), target)
                loss = loss + hard * ce
                sums["hard_label"] += ce.item() * len(idx)
            if soft > 0:
                tv, ti = zip(*(cache.rows(int(i)) for i in idx))
                kd = topk_kd_loss(rows.float(), torch.from_numpy(np.concatenate(tv)),
                                  torch.from_numpy(np.concatenate(ti)), float(cfg["temperature"]))
                loss = loss + soft * kd
                sums["soft_label"] += kd.item() * len(idx)
            if not torch.isfinite(loss):
                raise StageError(f"loss became {loss.item()} at epoch {epoch}", hint="lower distill.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(student.parameters(), float(cfg["grad_clip"]))
            opt.step()
            sched.step()
            step += 1
        ev = evaluate(student, val, pad)
        rec = {"epoch": epoch, "seconds": round(time.perf_counter() - t0, 2), "val_perplexity": ev["perplexity"],
               "val_agreement": ev["agreement"], "lr": sched.get_last_lr()[0],
               **{f"loss_{k}": v / len(examples) for k, v in sums.items() if v}}
        history.append(rec)
        if progress:
            progress(epoch, epochs, rec)
        if ev["agreement"] > best:
            best = ev["agreement"]
            best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
            rec["best"] = True
    if best_state is not None:
        student.load_state_dict(best_state)
    student.eval()
    best_epoch = max(history, key=lambda r: r["val_agreement"])["epoch"]
    return {"history": history, "best_epoch": best_epoch, "steps": step}
