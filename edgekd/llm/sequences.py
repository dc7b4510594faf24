"""Token sequences for sequence-level KD: examples, batching, answer-token logits, evaluation.

A training example is the chat-formatted prompt followed by the teacher's answer and the end
token; only answer positions carry loss. Training goes through edgekd.distill: the epoch loop is
`distill.trainer.fit`, the loss is the recipe's LossSet (soft_label reads the teacher's top-k per
answer token from `distill.cache.TopKSequenceCache`, hard_label is cross-entropy on the answer
tokens), so only the sequence-specific parts live here.

Evaluation, on held-out prompts the student never trained on: perplexity of the teacher's answers
under the model, and next-token agreement (the model's argmax equals the teacher's answer token,
teacher forcing). The control is the same student trained on the prompts' raw text alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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
        # the teacher's own tokens (generate.ROWS); a row without them (an older cache) re-encodes its text
        a = (list(r["ids"]) if r.get("ids") is not None else tok(r["answer"], add_special_tokens=False)["input_ids"]) \
            + [end_id]
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


def _row_index(examples: list[Example]):
    """[(batch row, position)] of the logit rows that predict the answer tokens, in example order."""
    import torch

    return torch.tensor([(j, pos) for j, e in enumerate(examples) for lo, hi in [answer_positions(e)]
                         for pos in range(lo, hi)], dtype=torch.long).reshape(-1, 2)


def answer_logits(model, examples: list[Example], pad: int):
    """Logits at the answer positions only, [rows, vocab]: the decoder runs on every token, the
    vocabulary projection (49k columns, most of a small LM's compute) only where loss is taken.
    `model` is a causal LM, or a `llm.parallel.Parallel` (the LM under DDP/FSDP: its step goes
    through the wrapper's forward)."""
    ids, mask, _ = _batch(examples, pad)
    index = _row_index(examples)
    through = getattr(model, "answer_rows", None)
    if through is not None:
        return through(ids, mask, index)
    from edgekd.llm.parallel import position_logits

    dev = model.get_output_embeddings().weight.device
    return position_logits(model, ids.to(dev), mask.to(dev), index.to(dev))


def evaluate(model, examples: list[Example], pad: int, batch_size: int = 16) -> dict[str, float]:
    """Perplexity of the answers and next-token agreement (argmax == answer token), teacher forcing.
    `model` under DDP/FSDP (`llm.parallel.Parallel`): each rank scores its share of every global chunk
    and the sums are added over ranks (every rank runs the same number of forwards, as FSDP needs)."""
    import torch
    import torch.nn.functional as F

    from edgekd import dist

    parallel = hasattr(model, "answer_rows") and dist.active()
    rank, world = dist.rank_world() if parallel else (0, 1)
    nll, hits, n = 0.0, 0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size * world):
            chunk = examples[i:i + batch_size * world][rank::world]
            real = bool(chunk)
            chunk = chunk or examples[:1]  # a forward all the same: the ranks' collectives stay in step
            rows = answer_logits(model, chunk, pad).float()
            if not real:
                continue
            target = torch.cat([torch.tensor(e.ids[e.start:]) for e in chunk]).to(rows.device)
            nll += F.cross_entropy(rows, target, reduction="sum").item()
            hits += int((rows.argmax(-1) == target).sum())
            n += len(target)
    if parallel:
        nll, hits, n = dist.sum_all(nll, hits, n)
        hits, n = int(hits), int(n)
    if n == 0:
        raise StageError("no held-out answer tokens to evaluate", hint="raise generate.held_out or the prompt count")
    return {"perplexity": math.exp(nll / n), "agreement": hits / n, "tokens": n}


def score_logits(logits_of: Callable[[list[int]], Any], examples: list[Example], name: str) -> dict[str, float]:
    """Perplexity and next-token agreement of any runtime's model on held-out examples (teacher forcing):
    `logits_of(ids)` returns the [len(ids), vocab] logits of one whole sequence (onnxruntime, ExecuTorch, ...)."""
    import numpy as np

    nll, hits, n = 0.0, 0, 0
    for e in examples:
        lo, hi = answer_positions(e)
        z = np.asarray(logits_of(e.ids))[lo:hi].astype(np.float64)
        target = np.asarray(e.ids[e.start:])
        m = z.max(-1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(z - m).sum(-1))
        nll += float((lse - z[np.arange(len(target)), target]).sum())
        hits += int((z.argmax(-1) == target).sum())
        n += len(target)
    if n == 0:
        raise StageError("no held-out answer tokens to evaluate", hint="raise generate.held_out or the prompt count")
    if not math.isfinite(nll):
        raise StageError(f"{name} produces non-finite logits", hint="drop this candidate")
    return {"perplexity": math.exp(nll / n), "agreement": hits / n, "tokens": n}


def teacher_rows(teacher, examples: list[Example], pad: int) -> Callable[[list[int]], Any]:
    """`TopKSequenceCache.write`'s view of a teacher: the logits at the answer positions of examples `ids`."""
    import torch

    def rows(ids: list[int]):
        with torch.no_grad():
            return answer_logits(teacher, [examples[i] for i in ids], pad)

    return rows


def answer_rows(examples: list[Example]) -> list[int]:
    """Rows (answer positions) per example, the cache's ragged layout."""
    return [hi - lo for lo, hi in map(answer_positions, examples)]


@dataclass
class GeneralText:
    """General text mixed into training (card `distill.general_text`): plain token sequences (Example start 1:
    every position after the first predicts its next token), the loss on their rows (the student: soft_label on
    the teacher's cached top-k; the control: hard_label on the text's own tokens) and the cache it reads."""

    examples: list[Example]
    loss_set: Any
    cache: Any = None  # distill.cache.TopKSequenceCache: the teacher's top-k per position; None for hard labels


def distill(student, examples: list[Example], val: list[Example], loss_set, cfg: Any, pad: int, *,
            cache: Any = None, checkpoint: Path | None = None, progress: Any = None,
            description: str = "distill", teacher: Any = None, parallel: str = "auto",
            general: GeneralText | None = None, one_process: bool = False, weighting: Any = None) -> dict[str, Any]:
    """Train `student` on `examples` through the shared loop (`distill.trainer.fit`): each step
    takes the student's logits at the answer tokens of a shuffled batch, and `loss_set` (soft_label
    on the cached top-k teacher rows, hard_label on the answer tokens) gives the loss. The best
    epoch on held-out agreement is kept. `cfg` is the recipe's DistillConfig (epochs, batch_size,
    lr, weight_decay, grad_clip, seed, patience). `checkpoint`: updated every epoch, resumed from.
    `teacher`: the teacher model, run on every batch when a term reads its features (hidden_state).
    Returns the history and the trained student (`student`: the object given, or under FSDP a whole copy).

    One process trains on its device (`llm.parallel.train_device`: the GPU of a GPU host, else the CPU).
    Under torchrun (a joined process group) the student trains under DDP or FSDP (`parallel`: ddp, fsdp,
    auto; llm.parallel): `cfg.batch_size` stays the global batch, each rank takes an interleaved share of
    it and its loss is weighted by its share of the batch's answer tokens, so N processes follow the
    1-process run; rank 0 writes the checkpoints, which hold full state dicts (any world size resumes them).

    `general`: general text beside the answers. Each epoch passes over its examples once (a seeded shuffle from
    the same generator, spread over the epoch's steps); a step's general texts run in the same forward as its
    answers, and `general.loss_set`'s terms (logged as general_<term>) are added to the answers' loss.

    `one_process`: train here alone even under torchrun (a stage rank 0 runs while the others wait: the search's
    proxy distillation).

    `weighting`: a per-sample weighting (edgekd.distill.weighting.build_weighting) applied per answer token: the
    teacher's cached top-k at each token are the classes it is judged on (`topk_weights`), and the answers' KD
    terms take the weights (mean 1 over the rank's tokens of a step). General text is not weighted."""
    import torch

    from edgekd import dist
    from edgekd.distill.hooks import FeatureCapture
    from edgekd.distill.losses import LossContext
    from edgekd.distill.trainer import allreduce_grads, fit, seed_everything
    from edgekd.distill.weighting import topk_weights

    if not examples:
        raise StageError(f"{description}: no training examples", hint="give more prompts")
    online = bool(getattr(loss_set, "needs_online_teacher", False))
    if online and teacher is None:
        raise StageError("a loss term reads the teacher's features but no teacher was given", hint="this is a bug in edgekd")
    if any(type(t).needs_teacher_logits() for t in getattr(loss_set, "terms", {}).values()) and cache is None:
        raise StageError("soft-label KD needs the teacher's cached logits", hint="this is a bug in edgekd")
    if general is not None:
        if not general.examples:
            raise StageError(f"{description}: general text without examples", hint="this is a bug in edgekd")
        if any(type(t).needs_teacher_logits() for t in general.loss_set.terms.values()) and general.cache is None:
            raise StageError("general-text KD needs the teacher's cached logits", hint="this is a bug in edgekd")
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    bs = cfg.batch_size
    steps_per_epoch = max(1, math.ceil(len(examples) / bs))
    rank, world = dist.rank_world() if dist.active() and not one_process else (0, 1)
    par, state_io, after_backward = None, None, None
    if world == 1:  # one process: on its device (a GPU host's GPU, else the CPU: nothing moves)
        from edgekd.llm.parallel import train_device

        dev = train_device()
        student.to(dev)
        loss_set.to(dev)
        if teacher is not None:
            teacher.to(dev)
    else:
        from edgekd.llm.parallel import FullState, wrap

        par = wrap(student, parallel, teacher if online else None)
        state_io = FullState(student)
        if any(True for _ in loss_set.parameters()):  # projectors live outside DDP/FSDP: average their grads
            after_backward = lambda: allreduce_grads(loss_set, world)  # noqa: E731
        if teacher is not None:
            teacher.to(par.device)
    forward = par if par is not None else student

    # general texts per step: every one once an epoch (the last steps may get none)
    per_step = math.ceil(len(general.examples) / steps_per_epoch) if general is not None else 0

    def batches(g: torch.Generator):
        perm = torch.randperm(len(examples), generator=g)
        # drawn only with general text: without it the generator's stream (and so every run) is what it was
        gperm = torch.randperm(len(general.examples), generator=g) if general is not None else None
        for step, b in enumerate(range(0, len(perm), bs)):
            yield perm[b:b + bs] if gperm is None else (perm[b:b + bs], gperm[step * per_step:(step + 1) * per_step])

    def step_loss(batch, progress_: float):
        idx, gidx = batch if isinstance(batch, tuple) else (batch, None)
        share = idx.tolist()[rank::world]
        real = bool(share)
        chunk = [examples[i] for i in share] if real else [examples[int(idx[0])]]
        n_answers = len(chunk)
        gshare: list[int] = []
        if gidx is not None and len(gidx):  # the same on every rank: all take part, or none
            gshare = gidx.tolist()[rank::world]
            # an empty share still runs one text (weighted 0 below): the ranks' forwards stay alike
            chunk = chunk + ([general.examples[i] for i in gshare] if gshare else [general.examples[int(gidx[0])]])
        s_feats: dict[str, Any] = {}
        t_feats: dict[str, Any] = {}
        if online:
            with FeatureCapture(student, loss_set.student_paths) as cap:
                rows = answer_logits(forward, chunk, pad).float()
            s_feats = cap.features
            ids, mask, _ = _batch(chunk, pad)
            dev = next(teacher.parameters()).device
            with torch.no_grad(), FeatureCapture(teacher, loss_set.teacher_paths, detach=True) as tcap:
                teacher.base_model(input_ids=ids.to(dev), attention_mask=mask.to(dev))
            t_feats = tcap.features
        else:
            rows = answer_logits(forward, chunk, pad).float()
        targets = [torch.tensor(e.ids[e.start:]) for e in chunk]
        n_rows = sum(len(t) for t in targets[:n_answers])
        g_rows, rows = rows[n_rows:], rows[:n_rows]
        target = torch.cat(targets[:n_answers]).to(rows.device)
        topk = None
        if cache is not None:
            topk = tuple(t.to(rows.device) for t in cache.get(torch.tensor(share if real else [int(idx[0])])))
        weights = topk_weights(weighting, *topk, target) if weighting is not None and topk is not None else None
        ctx = LossContext(student_logits=rows, teacher_logits=None, labels=target, student_features=s_feats,
                          teacher_features=t_feats, progress=progress_, teacher_topk=topk, sample_weight=weights)
        loss, parts = loss_set(ctx)
        if world > 1:
            # this rank's share of the global batch's answer tokens: DDP/FSDP average the ranks' gradients,
            # so the weighted losses give the gradient of the global batch's mean (an empty share weighs 0)
            mine = len(target) if real else 0
            total, = dist.sum_all(mine)
            loss = loss * (mine * world / total)
        if len(chunk) > n_answers:
            g_target = torch.cat(targets[n_answers:]).to(rows.device)
            g_topk = None
            if general.cache is not None:
                g_topk = tuple(t.to(rows.device) for t in general.cache.get(torch.tensor(gshare or [int(gidx[0])])))
            g_loss, g_parts = general.loss_set(LossContext(
                student_logits=g_rows, teacher_logits=None, labels=g_target, student_features={}, teacher_features={},
                progress=progress_, teacher_topk=g_topk))
            if world > 1:  # as the answers': weighted by this rank's share of the step's general-text tokens
                g_mine = len(g_target) if gshare else 0
                g_total, = dist.sum_all(g_mine)
                g_loss = g_loss * (g_mine * world / g_total)
            loss = loss + g_loss
            parts = {**parts, **{f"general_{k}": v for k, v in g_parts.items()}}
        return loss, parts, len(share)

    def validate() -> dict[str, float]:
        ev = evaluate(forward, val, pad)
        return {"val_agreement": ev["agreement"], "val_perplexity": ev["perplexity"]}

    res = fit(student, list(student.parameters()) + list(loss_set.parameters()), cfg, steps_per_epoch, batches,
              step_loss, validate, gen=gen, score="val_agreement", train_modules=[forward, loss_set],
              checkpoint=checkpoint, write_checkpoint=rank == 0, progress=progress, description=description,
              state_io=state_io, after_backward=after_backward)
    if par is not None and par.mode == "fsdp":
        # the sharded student stays with FSDP; the caller gets the same architecture whole, with the best weights
        from edgekd.llm.parallel import FullState

        student = par.plain
        FullState(student).load_model_state(res.best_state)
    elif state_io is not None:
        state_io.load_model_state(res.best_state)
    else:
        student.load_state_dict(res.best_state)
    student.eval()
    # the learning curve's x axis: answer tokens (those that carry loss) trained on so far
    per_epoch = sum(len(e.ids) - e.start for e in examples)
    for rec in res.history:
        rec["train_answer_tokens"] = rec["epoch"] * per_epoch
    out = {"history": res.history, "best_epoch": res.best_epoch, "steps": steps_per_epoch * len(res.history),
           "answer_tokens_per_epoch": per_epoch, "student": student}
    if par is not None:
        out["parallel"] = {"mode": par.mode, "world_size": world, "why": par.why, "device": str(par.device)}
    return out
