"""Prompts with range (edgekd/llm/selfinstruct.py): teacher-written requests cleaned and filtered against the set they
grow and the natural prompts, arithmetic and reasoning frames made by code, and topic groups held out whole."""
import json

import pytest

from edgekd.llm.selfinstruct import (KINDS, arithmetic_prompts, clean_instruction, filter_new, meta_prompts,
                                     read_topics, teacher_instructions)


@pytest.mark.parametrize("reply,want", [
    ("Question: How do bees make honey?", "How do bees make honey?"),
    ('1. "what is the best way to save money?"', "What is the best way to save money?"),
    ("Sure! Here is a request:\nExplain why the sky is blue.\nIt is because...", "Explain why the sky is blue."),
    ("- Request: Give me three tips for sleeping better!", "Give me three tips for sleeping better!"),
    ('A child might ask, "what is a thunderstorm?"', "What is a thunderstorm?"),
    ('What a wonderful question! How about "What are the most popular houseplants?"',
     "What are the most popular houseplants?"),
])
def test_a_reply_is_cleaned_to_the_request_in_it(reply, want):
    assert clean_instruction(reply) == want


@pytest.mark.parametrize("reply", [
    "Bees.",  # too short
    "How do bees make honey and why is it so",  # cut off: no end mark
    "Reply with the question only.",  # the meta-instruction echoed
    "Write one question that a curious person might ask about bees?",
    " ".join(["word"] * 41) + ".",  # a paragraph, not a request
    "1234 5678 9012 3456?",  # no words
    "What's a good question to ask a meteorologist about storms?",  # a question about questions
    "I'm ready to help. What's your request?",  # no request of its own
    "What a question. What can I do to make a good impression?",
    "",
])
def test_a_reply_that_is_not_one_request_is_dropped(reply):
    assert clean_instruction(reply) is None


def test_filter_drops_near_copies_of_the_reference_and_of_earlier_kept_requests():
    ref = ["What is a volcano? Answer in one sentence.", "Give me a tip for saving money."]
    natural = ["how long should i boil an egg"]
    cands = [{"id": "a", "prompt": "Question: What is a volcano? Answer in one sentence."},  # in the set
             {"id": "b", "prompt": "How long should I boil an egg?"},  # a natural prompt: stays held out by source
             {"id": "c", "prompt": "Why do cats purr when they are happy?"},
             {"id": "d", "prompt": "Why do cats purr when they're happy?"},  # near-copy of c, kept first
             {"id": "e", "prompt": "why do cats purr when they are happy?"},  # a duplicate of c
             {"id": "f", "prompt": "Explain how a rainbow forms after rain."},
             {"id": "g", "prompt": "Okay"}]
    kept, why = filter_new(cands, ref + natural)
    assert [k["id"] for k in kept] == ["c", "f"]
    assert kept[0]["prompt"] == "Why do cats purr when they are happy?"
    assert why == {"not_a_request": 1, "duplicate": 2, "near_copy": 2}  # a and e exact; b and d near
    assert sum(why.values()) + len(kept) == len(cands)


def test_meta_prompts_cover_every_topic_and_kind(tmp_path):
    f = tmp_path / "topics.txt"
    f.write_text("# seed topics\nbees\n\nsaving money  # a comment\nbees\n")
    topics = read_topics(f)
    assert topics == ["bees", "saving money"]
    metas = meta_prompts(topics)
    assert len(metas) == 2 * len(KINDS) and len({m["id"] for m in metas}) == len(metas)
    assert all(m["topic"] in m["prompt"] for m in metas)
    with pytest.raises(ValueError, match="unknown kind"):
        meta_prompts(topics, ["question", "poem"])


def test_answer_forms_rotate_over_the_kept_questions():
    from edgekd.llm.selfinstruct import ANSWER_FORMS, with_answer_forms

    rows = [{"id": str(i), "prompt": f"Why is the sky blue number {i}?"} for i in range(2 * len(ANSWER_FORMS))]
    out = with_answer_forms(rows)
    assert [r["prompt"] for r in out[:2]] == ["Why is the sky blue number 0?",
                                              "Why is the sky blue number 1? Answer in one sentence."]
    assert out[len(ANSWER_FORMS)]["form"] == "free" and len({r["form"] for r in out}) == len(ANSWER_FORMS)


def test_arithmetic_prompts_are_distinct_seeded_and_one_template_per_frame():
    a = arithmetic_prompts(5, seed=1)
    frames = {p["template"] for p in a}
    assert len(frames) >= 10 and all(sum(p["template"] == f for p in a) == 5 for f in frames)
    assert len({p["prompt"] for p in a}) == len(a)
    assert a == arithmetic_prompts(5, seed=1) and a != arithmetic_prompts(5, seed=2)
    assert any(p["prompt"].endswith("=?") for p in a) and any("step by step" in p["prompt"] for p in a)
    assert any(f.startswith("reason:") for f in frames)


def test_topic_groups_are_held_out_whole_without_purging_slot_words(tmp_path):
    """A "group" in the prompts file is a template named group:<topic> with no slot words: the split holds whole
    topics out and purges no training prompt for sharing a word with them (frames still purge theirs)."""
    from edgekd.llm.generate import load_prompts
    from edgekd.llm.heldout import slot_words, template_split

    rows = [{"prompt": f"{q} {t}?", "group": t} for t in ("bees", "rain", "tea", "maps", "ice", "wool", "jazz", "clay")
            for q in ("Why do people like", "How do I care for", "What should I know about")]
    rows += [{"prompt": f"What is {n} plus {n + 1}?", "template": "plus"} for n in range(6)]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = load_prompts(f)
    assert {p["template"] for p in prompts} >= {"group:bees", "plus"}
    slots = slot_words(prompts)
    assert all(not slots[p["id"]] for p in prompts if p["template"].startswith("group:"))
    assert any(slots[p["id"]] for p in prompts if p["template"] == "plus")
    out, info = template_split(prompts, 0.15, 0)
    held = {p["template"] for k in ("val", "test") for p in out[k]}
    assert held and not held & {p["template"] for p in out["train"] + out["test_in"]}
    groups_in_train = [p for p in prompts if p["template"].startswith("group:") and p["template"] not in held]
    assert len([p for p in out["train"] + out["test_in"] if p["template"].startswith("group:")]) == len(groups_in_train)


def test_the_teacher_writes_into_a_resumable_file(tmp_path):
    """teacher_instructions on a tiny random Llama: one reply row per (topic, kind), in a file a second call reads
    back without generating (its replies are whatever a random model says: filtering is tested above)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.test_init_lm import _tokenizer

    tok = _tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
    out = tmp_path / "replies.jsonl"
    rows = teacher_instructions(model, tok, ["apple", "river"], out, "tiny", max_new_tokens=6, batch_size=4,
                                kinds=["question", "child"])
    assert [(r["topic"], r["kind"]) for r in rows] == [("apple", "question"), ("apple", "child"),
                                                       ("river", "question"), ("river", "child")]
    assert all(isinstance(r["prompt"], str) for r in rows)
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["settings"]["teacher"] == "tiny" and len(lines) == 5

    def boom(*a, **k):
        raise AssertionError("generated again")
    model.generate = boom
    again = teacher_instructions(model, tok, ["apple", "river"], out, "tiny", max_new_tokens=6, batch_size=4,
                                 kinds=["question", "child"])
    assert again == rows


def test_sampled_replies_are_seeded_per_batch_and_resumable(tmp_path):
    """samples=3: the greedy reply per request in `out`, two sampled ones in its `.sampled` sibling (ids `<id>~k`,
    `sample` k); a rerun reads them back without generating; another seed draws other text, the same seed the same."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.test_init_lm import _tokenizer

    tok = _tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
    kw = dict(max_new_tokens=8, batch_size=2, kinds=["question"], samples=3, temperature=1.5, top_p=1.0)
    out = tmp_path / "replies.jsonl"
    rows = teacher_instructions(model, tok, ["apple", "river"], out, "tiny", **kw)
    assert [(r["id"], r["sample"]) for r in rows] == [
        ("m000-question", 0), ("m001-question", 0), ("m000-question~1", 1), ("m001-question~1", 1),
        ("m000-question~2", 2), ("m001-question~2", 2)]
    sampled = out.with_name(out.name + ".sampled").read_text().splitlines()
    assert json.loads(sampled[0])["settings"]["sample"] == {"temperature": 1.5, "top_p": 1.0, "seed": 0}
    assert len(sampled) == 5 and len(out.read_text().splitlines()) == 3
    # a random model at temperature 1.5 over 8 tokens: the draws differ from the greedy reply and from each other
    texts = [r["prompt"] for r in rows]
    assert len(set(texts[2:])) == 4 and not set(texts[:2]) & set(texts[2:])

    real = model.generate
    model.generate = lambda *a, **k: (_ for _ in ()).throw(AssertionError("generated again"))
    assert teacher_instructions(model, tok, ["apple", "river"], out, "tiny", **kw) == rows
    model.generate = real
    same = teacher_instructions(model, tok, ["apple", "river"], tmp_path / "again.jsonl", "tiny", **kw)
    assert same == rows  # seeded per batch: a fresh file draws the same text
    other = teacher_instructions(model, tok, ["apple", "river"], tmp_path / "seed1.jsonl", "tiny", **kw, seed=1)
    assert [r["prompt"] for r in other[:2]] == texts[:2] and [r["prompt"] for r in other[2:]] != texts[2:]


def test_group_max_ratio_drops_rewordings_within_a_group():
    """Sampling one request several times rewords it: with group_max_ratio such rewordings in a group go too, while
    different questions on the same topic stay (without it only exact duplicates go)."""
    cands = [{"prompt": "How do bees make honey?", "topic": "bees"},
             {"prompt": "How do bees make their honey?", "topic": "bees"},  # a rewording: dropped at 0.8
             {"prompt": "Why do bees dance in the hive?", "topic": "bees"}]  # another question: kept
    kept, why = filter_new(cands, [], group="topic", clean=False, group_max_ratio=0.8)
    assert [k["prompt"] for k in kept] == [cands[0]["prompt"], cands[2]["prompt"]]
    assert why["rewording_in_group"] == 1
    assert len(filter_new(cands, [], group="topic", clean=False)[0]) == 3


def test_within_a_group_only_exact_duplicates_are_dropped():
    """Candidates of one group (a topic, a frame) are held out together: near-copies among them stay (a frame's
    instances share its words by design), exact duplicates and near-copies of another group or the reference go."""
    ref = ["What is 3 plus 4?"]
    cands = [{"prompt": "A shop had 78 books and sold 19. How many are left?", "template": "sub"},
             {"prompt": "A shop had 91 pens and sold 12. How many are left?", "template": "sub"},  # same frame: kept
             {"prompt": "A shop had 91 pens and sold 12. How many are left?", "template": "sub"},  # exact: dropped
             {"prompt": "A shop had 78 books and sold 19. How many remain?", "template": "other"},  # across: dropped
             {"prompt": "What is 3 plus 4?", "template": "plus"}]  # the reference itself
    kept, why = filter_new(cands, ref, group="template", clean=False)
    assert [k["prompt"] for k in kept] == [cands[0]["prompt"], cands[1]["prompt"]]
    assert why == {"not_a_request": 0, "duplicate": 2, "near_copy": 1}
    assert len(filter_new(cands[:2], ref, clean=False)[0]) == 1  # without groups the second is a near-copy
