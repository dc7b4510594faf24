"""Per-token difficulty weighting for a language-model student (distill.weighting on a text-generation recipe): each
answer token's soft-label term is weighted by the teacher's cached top-k at that token. Tiny random Llamas; seconds."""
import math

import numpy as np
import pytest
import torch

from tests.llm.test_general_text import _tiny_lm


def test_topk_weights_judge_each_row_on_the_teachers_k_candidates():
    from edgekd.distill.weighting import build_weighting, topk_weights

    ninf = float("-inf")
    values = torch.tensor([[6.0, 1.0, 0.0, -1.0],     # confident, answer token = its top candidate
                           [1.0, 1.0, 1.0, 1.0],      # flat over its k
                           [2.0, 1.9, ninf, ninf],    # a short row: a -inf tail
                           [3.0, 0.0, 0.0, 0.0]])     # the answer token is not among its top k
    ids = torch.tensor([[5, 7, 9, 11], [5, 7, 9, 11], [7, 5, 0, 0], [9, 11, 13, 15]])
    labels = torch.tensor([5, 9, 5, 5])
    p = torch.softmax(torch.where(torch.isfinite(values), values, torch.tensor(-1e9)), dim=1)

    conf = topk_weights(build_weighting({"kind": "teacher_confidence"}), values, ids, labels)
    want = p.amax(1) / p.amax(1).mean()
    torch.testing.assert_close(conf, want)
    assert conf[0] > conf[2] > conf[1] and float(conf.mean()) == pytest.approx(1.0)

    ent = topk_weights(build_weighting({"kind": "teacher_entropy"}), values, ids, labels)
    assert torch.isfinite(ent).all() and ent[1] == pytest.approx(0.0, abs=1e-6)  # uniform over k: log k, weight 0
    assert ent[0] > ent[2] > ent[1]

    margin = topk_weights(build_weighting({"kind": "ground_truth_margin"}), values, ids, labels)
    # row 2: the answer token (5) is the teacher's second candidate: a negative margin, below the others
    raw = torch.tensor([(1 + p[0, 0] - p[0, 1]) / 2, (1 + p[1, 2] - p[1, 0]) / 2, (1 + p[2, 1] - p[2, 0]) / 2])
    raw = torch.cat([raw, raw.mean()[None]])  # row 3: not in the top k, no margin: the labeled rows' mean
    torch.testing.assert_close(margin, raw / raw.mean())
    assert margin[2] < margin[1] < margin[0]


def _cache(tmp_path, teacher, examples, k):
    from edgekd.distill.cache import TopKSequenceCache
    from edgekd.llm import sequences as S

    return TopKSequenceCache(tmp_path / "topk").write(S.teacher_rows(teacher, examples, 0), S.answer_rows(examples), k)


def test_the_weights_reach_the_answers_soft_label_term(tmp_path):
    """One step (one batch): the logged soft-label loss is the weighted mean of the per-token KD over the teacher's
    top-k, with the weights topk_weights gives, and it differs from the unweighted one."""
    from edgekd.config import DistillConfig
    from edgekd.distill.losses import build_losses, token_kd
    from edgekd.distill.weighting import build_weighting, topk_weights
    from edgekd.llm import sequences as S

    rng = np.random.default_rng(0)
    answers = [S.Example(rng.integers(3, 40, size=10).tolist(), 4) for _ in range(6)]
    teacher = _tiny_lm(7).eval()
    with torch.no_grad():  # confidence that differs from token to token
        teacher.lm_head.weight.mul_(torch.linspace(0.5, 30.0, 40)[:, None])
    cache = _cache(tmp_path, teacher, answers, 4)
    cfg = DistillConfig(epochs=1, batch_size=len(answers), lr=1e-3, seed=0)
    terms = [{"kind": "soft_label", "weight": 1.0, "temperature": 2.0}]
    scheme = build_weighting({"kind": "teacher_confidence"})

    got = {}
    for name, w in (("plain", None), ("weighted", scheme)):
        s = _tiny_lm(1)
        init = {k: v.clone() for k, v in s.state_dict().items()}
        res = S.distill(s, answers, answers[:2], build_losses(terms, s, None, None), cfg, 0, cache=cache, weighting=w)
        got[name] = res["history"][0]["loss_soft_label"]
        # what the step saw: the initial student's rows, the cached top-k of the shuffled batch (all of it)
        s.load_state_dict(init)
        order = torch.randperm(len(answers), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        with torch.no_grad():
            rows = S.answer_logits(s, [answers[i] for i in order], 0).float()
        values, ids = cache.get(torch.tensor(order))
        target = torch.cat([torch.tensor(answers[i].ids[answers[i].start:]) for i in order])
        sw = topk_weights(w, values, ids, target) if w is not None else None
        want = float(token_kd(rows, values, ids, 2.0, sw))
        assert got[name] == pytest.approx(want, rel=1e-4), name
    assert not math.isclose(got["plain"], got["weighted"], rel_tol=1e-3)


def test_weighting_keys_the_language_model_distill_stage(tmp_path):
    from edgekd.cards import load_recipe, load_target
    from edgekd.config import parse_sets
    from edgekd.errors import ConfigError
    from edgekd.pipeline import BuildContext, stage_key
    from edgekd.tasks.text_generation import front

    stage = next(s for s in front() if s.name == "distill")

    def ctx(*sets):
        return BuildContext(out=tmp_path / "b", recipe=load_recipe("smollm2-seqkd", parse_sets(list(sets))),
                            target=load_target("cpu"), recipe_ref="smollm2-seqkd", target_ref="cpu")

    key = stage_key(stage, ctx(), {})
    assert "weighting" not in stage.config(ctx())["distill"]
    assert "weighting" not in stage.config(ctx('distill.weighting={"kind": "none"}'))["distill"]  # every token weighs 1
    on = ctx('distill.weighting={"kind": "teacher_entropy", "temperature": 2.0}')
    assert stage.config(on)["distill"]["weighting"] == {"kind": "teacher_entropy", "temperature": 2.0}
    assert stage_key(stage, on, {}) != key
    with pytest.raises(ConfigError, match="unknown weighting kind"):
        stage.config(ctx('distill.weighting={"kind": "teacher_confidance"}'))
    with pytest.raises(ConfigError, match="hidden_state term compares whole sequences"):
        stage.config(ctx('distill.weighting={"kind": "teacher_confidence"}',
                         'distill.losses=[{"kind": "soft_label", "weight": 1.0}, '
                         '{"kind": "hidden_state", "weight": 0.5, "layers": [["model.layers.0", "model.layers.0"]]}]'))
