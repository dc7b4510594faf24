"""Held-out evaluation of the language-model student (#28): the template split, its fall-back, bootstrap intervals."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from edgekd.cards import load_recipe
from edgekd.errors import UserError
from edgekd.llm.generate import GROUP, load_prompts, shipped_prompts
from edgekd.llm.heldout import bootstrap_ci, independent_prompts, slot_words, summarize, template_split
from edgekd.tasks.text_generation.data import split_plan


def _shipped() -> list[dict]:
    """The card's prompts as the build reads them (a teacher-written prompt's topic `group` is its template)."""
    return load_prompts(None)


def test_every_shipped_prompt_has_a_template_and_the_frames_cover_most():
    ps = _shipped()
    assert all(p.get("template") for p in ps)
    free = [p for p in ps if p["template"].startswith("free-")]
    assert len(free) < 10  # one-offs; the rest follow the sentence frames of benchmarks/make_llm_prompts.py
    frames = {p["template"] for p in ps if not p["template"].startswith(("free-", GROUP, "arith", "reason"))}
    assert len(frames) >= 20
    # the grown part: questions the teacher wrote, one template per seed topic, and the arithmetic frames
    topics = {p["template"] for p in ps if p["template"].startswith(GROUP)}
    assert len(topics) >= 50 and len([p for p in ps if p["template"].startswith(GROUP)]) >= 300
    assert len([p for p in ps if p["template"].startswith(("arith", "reason"))]) >= 100


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_template_split_holds_out_whole_templates_and_their_slot_words(seed):
    ps = _shipped()
    sp, info = template_split(ps, 0.1, seed)
    train_t = {p["template"] for p in sp["train"]}
    held = [p for k in ("val", "test") for p in sp[k]]
    # no template of val or test is trained on, and val and test do not share one either
    assert not train_t & {p["template"] for p in held}
    assert not {p["template"] for p in sp["val"]} & {p["template"] for p in sp["test"]}
    slots = slot_words(ps)
    train_words = set().union(*(slots[p["id"]] for p in sp["train"]))
    assert not train_words & set().union(*(slots[p["id"]] for p in held))
    # the in-template test: training templates, never trained on
    assert {p["template"] for p in sp["test_in"]} <= train_t
    assert not {p["id"] for p in sp["test_in"]} & {p["id"] for p in sp["train"]}
    # each held-out share is near val_fraction of the prompts, and the report names the held-out templates
    for k in ("val", "test", "test_in"):
        assert 0.05 * len(ps) <= len(sp[k]) <= 0.15 * len(ps), (k, len(sp[k]))
    assert info["kind"] == "template" and sorted({p["template"] for p in sp["test"]}) == info["test_templates"]
    assert len(sp["train"]) >= 0.4 * len(ps)


def test_template_split_is_deterministic_and_seeded():
    ps = _shipped()
    a, _ = template_split(ps, 0.1, 0)
    b, _ = template_split(list(ps), 0.1, 0)
    c, _ = template_split(ps, 0.1, 1)
    assert {k: [p["id"] for p in v] for k, v in a.items()} == {k: [p["id"] for p in v] for k, v in b.items()}
    assert {p["template"] for p in a["test"]} != {p["template"] for p in c["test"]}


def test_too_few_templates_is_a_clear_exit_2_error():
    ps = [{"id": f"p{i}", "prompt": f"What is {i} plus 1?", "template": "add" if i % 2 else "sub"} for i in range(20)]
    with pytest.raises(UserError, match="too few to hold out whole templates") as e:
        template_split(ps, 0.1, 0)
    assert e.value.exit_code == 2 and "data.split: shuffle" in e.value.hint


def _ctx(tmp_path, rows, split="template"):
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return SimpleNamespace(recipe=load_recipe("smollm2-seqkd", {"data.path": str(p), "data.split": split}))


def test_prompts_without_templates_fall_back_to_a_shuffle(tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"Question number {i}?"} for i in range(40)]
    sp, info = split_plan(_ctx(tmp_path, rows))
    assert info["kind"] == "shuffle" and info["requested"] == "template" and "no prompt" in info["why"]
    assert (len(sp["val"]), len(sp["test"]), len(sp["train"]), sp["test_in"]) == (4, 4, 32, [])


def test_user_templates_are_read_from_the_prompts_file(tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"Tell me about topic{i} in style {i % 6}.", "template": f"t{i % 6}"}
            for i in range(60)]
    sp, info = split_plan(_ctx(tmp_path, rows))
    assert info["kind"] == "template" and info["templates"] == 6
    assert not {p["template"] for p in sp["train"]} & {p["template"] for k in ("val", "test") for p in sp[k]}


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_prompts():
    rng = np.random.default_rng(0)

    def prompts(n):
        tokens = rng.integers(5, 40, n)
        return rng.binomial(tokens, 0.6), tokens

    widths = []
    for n in (30, 300, 3000):
        hits, tokens = prompts(n)
        lo, hi = bootstrap_ci(hits, tokens)
        assert lo <= hits.sum() / tokens.sum() <= hi
        widths.append(hi - lo)
    assert widths[0] > 2 * widths[1] > 4 * widths[2]  # ~1/sqrt(n): x10 prompts, ~3x narrower
    # the summary: the point estimate inside its interval, per template summing back to the whole
    hits, tokens = prompts(50)
    nll = tokens * 1.5
    s = summarize(nll, hits, tokens, ["a"] * 20 + ["b"] * 30)
    assert s["agreement_ci95"][0] <= s["agreement"] <= s["agreement_ci95"][1]
    assert s["perplexity"] == pytest.approx(np.exp(1.5))
    assert sum(t["tokens"] for t in s["per_template"].values()) == s["tokens"] == tokens.sum()
    assert s["per_template"]["a"]["prompts"] == 20


def test_independent_prompts_drops_near_copies_by_ratio_or_shared_content_words():
    reference = ["What is 13 times 7?", "Tell me one interesting fact about dogs.", "How does a fridge keep food cold?"]
    asked = ["What is 3 times 7?",                       # a near-copy by difflib ratio
             "A fun fact about dogs?",                  # another frame, most content words shared (fact, dogs)
             "Briefly, how does a refrigerator keep food cold?",
             "Plan a quick dinner with rice and eggs."]  # independent
    kept, dropped = independent_prompts(asked, reference)
    assert kept == ["Plan a quick dinner with rice and eggs."]
    closest = {d["prompt"]: d["closest"] for d in dropped}
    assert closest["What is 3 times 7?"] == "What is 13 times 7?"
    assert closest["A fun fact about dogs?"] == "Tell me one interesting fact about dogs."
    assert all(d["ratio"] >= 0.7 or d["overlap"] >= 0.5 for d in dropped)
    # stricter thresholds keep less, looser keep more
    assert len(independent_prompts(asked, reference, max_ratio=0.99, max_overlap=1.01)[0]) == 4


def test_the_shipped_natural_prompt_set_is_independent_of_the_shipped_prompts():
    """models/prompts/smollm2-natural.jsonl (issue 28: >= 100 prompts written apart from the templates, never
    used for a choice) holds no near-copy of any prompt of the 22 frames, and its ids do not collide with the card's.
    The questions the teacher wrote later and the arithmetic problems come near a few (a build's natural stage leaves
    those out against its own training prompts: scored, never trained on): 11 of 104 now, at most an eighth."""
    natural = [json.loads(ln) for ln in (shipped_prompts().parent / "smollm2-natural.jsonl").read_text().splitlines()]
    frames = [json.loads(ln) for ln in (shipped_prompts().parent / "smollm2-prompts-900.jsonl").read_text().splitlines()]
    shipped = _shipped()
    assert len(natural) >= 100 and len({p["id"] for p in natural}) == len(natural)
    assert not {p["id"] for p in natural} & {p["id"] for p in shipped}
    kept, dropped = independent_prompts([p["prompt"] for p in natural], [p["prompt"] for p in frames])
    assert dropped == [] and len(kept) == len(natural)
    kept, dropped = independent_prompts([p["prompt"] for p in natural], [p["prompt"] for p in shipped])
    grown = {p["prompt"] for p in shipped if p["template"].startswith((GROUP, "arith", "reason"))}
    assert all(d["closest"] in grown for d in dropped) and len(dropped) <= len(natural) // 8


def test_train_prompts_subsets_training_only_and_nests(tmp_path):
    """data.train_prompts (a learning curve's x axis): N of the training prompts, seeded and nested (the subset at N
    is inside the one at 2N), validation, test and the in-template test unchanged; N at or past the split is all."""
    rows = _shipped()
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def plan(n):
        over = {"data.path": str(p), "data.split": "template"} | ({"data.train_prompts": n} if n else {})
        return split_plan(SimpleNamespace(recipe=load_recipe("smollm2-seqkd", over)))
    full, info = plan(None)
    small, sinfo = plan(50)
    mid, _ = plan(120)
    assert len(small["train"]) == 50 and len(mid["train"]) == 120 and "train_prompts" not in info
    assert sinfo["train_prompts"] == {"kept": 50, "of": len(full["train"])}
    ids = [{q["id"] for q in s["train"]} for s in (small, mid, full)]
    assert ids[0] < ids[1] < ids[2]
    for k in ("val", "test", "test_in"):
        assert [q["id"] for q in small[k]] == [q["id"] for q in full[k]]
    assert plan(10_000)[0]["train"] == full["train"]


def test_the_teachers_held_out_pass_is_cached_by_teacher_and_examples(tmp_path):
    """The teacher's held-out report is read back for the same teacher and examples (a curve's next point, a rebuilt
    student) and made again for another teacher or other examples: equal to a fresh pass either way."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgekd.llm.sequences import Example
    from edgekd.tasks.text_generation.distill import held_out_report, teacher_held_out

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)).eval()
    calls = [0]
    model.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))  # the decoder runs per pass
    rng = np.random.default_rng(0)
    ex = [Example(ids=[int(t) for t in rng.integers(1, 40, 9)], start=4) for _ in range(5)]
    sets = {"val": (ex[:3], ["a", "a", "b"]), "test": (ex[3:], ["c", "c"])}
    ctx = SimpleNamespace(cache_dir=tmp_path)
    first = teacher_held_out(ctx, model, sets, 0, "t1")
    assert first == json.loads(json.dumps(held_out_report(model, sets, 0)))
    n = calls[0]
    assert teacher_held_out(ctx, model, sets, 0, "t1") == first and calls[0] == n  # read back: no forward
    teacher_held_out(ctx, model, sets, 0, "t2")
    assert calls[0] > n  # another teacher
    n = calls[0]
    other = {"val": (ex[:3], ["a", "a", "b"]), "test": (ex[3:4], ["c"])}
    assert teacher_held_out(ctx, model, other, 0, "t1")["test"]["prompts"] == 1 and calls[0] > n
