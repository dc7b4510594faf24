"""The -vocab candidates: a language model's output head trimmed to the tokens seen in training (edgekd/llm/vocab.py),
on a tiny random Llama exported with its KV cache. Seconds."""
import numpy as np
import pytest

VOCAB = 96


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from tests.tiny_lm import tied_llama_onnx

    d = tmp_path_factory.mktemp("vocab")
    model, path = tied_llama_onnx(d, vocab=VOCAB)
    return d, model, path


PROMPTS = [[1, 5, 9, 13, 17], [1, 40, 41, 7], [1, 3, 3, 60, 22, 8, 11]]


def test_the_trimmed_head_keeps_the_kept_logits_and_never_emits_a_dropped_token(exported, tmp_path):
    from edgekd.llm.onnx_gen import OrtLM
    from edgekd.llm.vocab import trim_head, training_vocab

    d, _, path = exported
    full = OrtLM(path)
    # what greedy decoding emits from the prompts, plus half the other tokens: the prompts' greedy text is kept whole
    greedy = [full.generate(p, 10, stop=[])[0] for p in PROMPTS]
    rng = np.random.default_rng(0)
    keep = training_vocab([*greedy, rng.choice(VOCAB, size=VOCAB // 2, replace=False).tolist()], always=[2])
    assert 2 in keep and len(keep) < VOCAB
    info = trim_head(path, tmp_path / "trimmed.onnx", keep)
    assert info["kept"] == len(keep) and info["vocab"] == VOCAB
    assert info["head_macs_per_token"] == 32 * len(keep) and info["whole_head_macs_per_token"] == 32 * VOCAB
    trimmed = OrtLM(tmp_path / "trimmed.onnx")
    dropped = np.setdiff1d(np.arange(VOCAB), keep)
    for p, want in zip(PROMPTS, greedy):
        a, b = full.logits(p), trimmed.logits(p)
        assert a.shape == b.shape == (len(p), VOCAB)
        np.testing.assert_allclose(b[:, keep], a[:, keep], rtol=1e-5, atol=1e-5)
        # every dropped token: below every kept one by log(V - K), all of them together as likely as the least kept
        floor = b[:, keep].min(axis=1, keepdims=True) - np.log(len(dropped))
        np.testing.assert_allclose(b[:, dropped], np.broadcast_to(floor, (len(p), len(dropped))), rtol=1e-5, atol=1e-5)
        assert trimmed.generate(p, 10, stop=[])[0] == want  # the same text where the full head's tokens are kept
    # where the full head's next token is dropped, the trimmed head says the best kept one instead
    p = PROMPTS[0]
    first = int(full.logits(p)[-1].argmax())
    info2 = trim_head(path, tmp_path / "t2.onnx", [t for t in range(VOCAB) if t != first])
    b = OrtLM(tmp_path / "t2.onnx").logits(p)[-1]
    order = np.argsort(-full.logits(p)[-1])
    assert info2["kept"] == VOCAB - 1 and int(b.argmax()) == int(order[1])


@pytest.mark.parametrize("q", [0.03, 0.9])
def test_a_calibrated_floor_gives_the_dropped_tokens_the_measured_share_and_never_the_argmax(exported, tmp_path, q):
    """dropped_mass q: the V - K dropped tokens together hold q of the probability at every position (0.03), unless
    that would let one outrank a kept token (0.9: capped below the most likely kept one); kept logits unchanged."""
    from edgekd.llm.onnx_gen import OrtLM
    from edgekd.llm.vocab import dropped_share, floor_gap, trim_head

    d, _, path = exported
    full = OrtLM(path)
    keep = sorted(set(range(0, VOCAB, 2)) | {2})
    info = trim_head(path, tmp_path / "cal.onnx", keep, dropped_mass=q)
    assert info["dropped_mass"] == q and info["floor_gap"] == pytest.approx(floor_gap(q, VOCAB, len(keep)))
    trimmed = OrtLM(tmp_path / "cal.onnx")
    dropped = np.setdiff1d(np.arange(VOCAB), keep)
    capped = q == 0.9
    assert ("capped" in info["note"]) == capped
    for p in PROMPTS:
        a, b = full.logits(p).astype(np.float64), trimmed.logits(p).astype(np.float64)
        np.testing.assert_allclose(b[:, keep], a[:, keep], rtol=1e-5, atol=1e-5)
        prob = np.exp(b - b.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        mass = prob[:, dropped].sum(1)
        if capped:  # each dropped token at most half the most likely kept one
            assert (b[:, dropped].max(1) <= b[:, keep].max(1) - np.log(2) + 1e-4).all()
        else:
            np.testing.assert_allclose(mass, q, rtol=1e-4)
        assert set(b.argmax(1)) <= set(keep)
    # the share a build passes: validation tokens outside the kept set, smoothed so that none missed is not zero
    assert dropped_share([[0, 1, 2], [4, 5]], keep) == {"dropped_mass": (2 + 0.5) / 6, "missed": 2, "tokens": 5}
    assert dropped_share([[0, 2]], keep)["dropped_mass"] == pytest.approx(0.5 / 3)
    with pytest.raises(ValueError):
        floor_gap(0.0, VOCAB, len(keep))


def test_the_trimmed_graph_quantizes_and_is_smaller_as_int8(exported, tmp_path):
    from edgekd.llm.onnx_gen import OrtLM
    from edgekd.llm.vocab import trim_head
    from edgekd.quantize.candidates import make_candidate

    d, _, path = exported
    keep = list(range(0, VOCAB, 3)) + [2]
    trim_head(path, tmp_path / "trimmed.onnx", keep)
    def smoke(p):  # what the LM quantize plan runs: a KV-cache decode
        OrtLM(p).generate(PROMPTS[0], 3, stop=[])

    make_candidate("int8-dynamic", path, tmp_path / "full-int8.onnx", None, {}, smoke=smoke)
    make_candidate("int8-dynamic", tmp_path / "trimmed.onnx", tmp_path / "trim-int8.onnx", None, {}, smoke=smoke)
    assert (tmp_path / "trim-int8.onnx").stat().st_size < (tmp_path / "full-int8.onnx").stat().st_size
    a, b = OrtLM(tmp_path / "full-int8.onnx").logits(PROMPTS[2]), OrtLM(tmp_path / "trim-int8.onnx").logits(PROMPTS[2])
    k = sorted(set(keep))
    assert (a[:, k].argmax(1) == b[:, k].argmax(1)).mean() >= 0.8  # int8 of the same kept rows


def test_nothing_to_trim_and_a_head_that_is_not_a_matmul_are_clear_errors(exported, tmp_path):
    import onnx
    from onnx import helper

    from edgekd.errors import StageError
    from edgekd.llm.vocab import trim_head

    _, _, path = exported
    with pytest.raises(StageError, match="nothing to trim"):
        trim_head(path, tmp_path / "all.onnx", list(range(VOCAB)))
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["logits"])], "g", [x], [y])
    onnx.save(helper.make_model(g), str(tmp_path / "relu.onnx"))
    with pytest.raises(StageError, match="not a MatMul"):
        trim_head(tmp_path / "relu.onnx", tmp_path / "r2.onnx", [0, 1])
    assert not (tmp_path / "all.onnx").exists() and not (tmp_path / "r2.onnx").exists()


def test_vocab_candidate_names(tmp_path):
    from edgekd.cards import load_recipe, load_target
    from edgekd.config import parse_sets
    from edgekd.errors import ConfigError
    from edgekd.pipeline import BuildContext
    from edgekd.quantize.candidates import base_candidate, candidate_kind, validate_candidate_names
    from edgekd.tasks.text_generation.hooks import lm_candidate_names

    assert base_candidate("int8-dynamic-vocab") == ("int8-dynamic", True) and base_candidate("fp32") == ("fp32", False)
    assert candidate_kind("int4-weight-vocab") == candidate_kind("int4-weight")

    def names(c, target="cpu"):
        ctx = BuildContext(out=tmp_path / "b", recipe=load_recipe("smollm2-seqkd", parse_sets([f"quantize.candidates={c}"])),
                           target=load_target(target), recipe_ref="smollm2-seqkd", target_ref=target)
        return lm_candidate_names(ctx)

    assert names("[int8-dynamic-vocab, int8-dynamic]") == ["fp32", "int8-dynamic-vocab", "int8-dynamic"]
    with pytest.raises(ConfigError, match="do not apply to KV-cache language models"):
        names("[int8-qdq-vocab]")
    with pytest.raises(ConfigError, match="unknown quantization candidate 'int8-dinamic'"):
        names("[int8-dinamic-vocab]")
    with pytest.raises(ConfigError, match="unknown quantization candidate"):  # a classifier has no vocabulary
        validate_candidate_names(["int8-dynamic-vocab"])
