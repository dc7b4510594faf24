"""pruned_llama: a student cut out of a Llama teacher (depth, GQA heads, FFN neurons, hidden channels).

Tiny random Llamas (GQA: 6 query heads reading 2 KV heads), no tokenizer; every test runs in seconds."""
import subprocess
import sys

import pytest
import torch

from edgekd.errors import ConfigError


def _teacher(seed: int = 0, layers: int = 5, hidden: int = 48, heads: int = 6, kv: int = 2, inter: int = 40,
             tie: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # RMSNorm weights of 1 would make every channel look alike: give them spread
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return m


def _calib(n: int = 6, length: int = 12):
    from edgekd.llm.prune import calibration_batches
    from edgekd.llm.sequences import Example

    g = torch.Generator().manual_seed(1)
    ex = [Example(torch.randint(1, 64, (length - k % 3,), generator=g).tolist(), 2) for k in range(n)]
    return calibration_batches(ex, 0, n, batch_size=4)


@pytest.mark.parametrize("tie", [True, False])
def test_all_fractions_one_is_the_teacher(tie):
    from edgekd.llm.prune import pruned_llama

    t = _teacher(tie=tie)
    s, info = pruned_llama(t, _calib(), depth=1.0, heads=1.0, kv_heads=1.0, ffn=1.0, hidden=1.0)
    ids = torch.randint(1, 64, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = t(input_ids=ids).logits, s(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-6, rtol=0), (a - b).abs().max()
    assert info["teacher_layers"] == [0, 1, 2, 3, 4]
    assert sum(p.numel() for p in s.parameters()) == sum(p.numel() for p in t.parameters())


def test_a_list_of_all_layers_at_full_width_is_also_the_teacher():
    # importance is measured (a list is given), but every unit is kept in the teacher's order
    from edgekd.llm.prune import pruned_llama

    t = _teacher()
    s, _ = pruned_llama(t, _calib(), layers=[0, 1, 2, 3, 4])
    ids = torch.randint(1, 64, (1, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(t(input_ids=ids).logits, s(input_ids=ids).logits, atol=1e-6, rtol=0)


def test_smaller_fractions_give_a_gqa_model_of_the_right_shapes_that_runs():
    from edgekd.llm.prune import pruned_llama

    t = _teacher()
    s, info = pruned_llama(t, _calib(), depth=0.4, heads=0.67, kv_heads=0.5, ffn=0.5, hidden=0.5)
    c = s.config
    assert c.num_hidden_layers == 2 and c.hidden_size == 24 and c.intermediate_size == 20
    # one of the 2 KV groups, 2 of its 3 query heads; head size stays the teacher's
    assert (c.num_key_value_heads, c.num_attention_heads, c.head_dim) == (1, 2, 8)
    layer = s.model.layers[0]
    assert tuple(layer.self_attn.q_proj.weight.shape) == (16, 24)
    assert tuple(layer.self_attn.k_proj.weight.shape) == (8, 24)
    assert tuple(layer.self_attn.o_proj.weight.shape) == (24, 16)
    assert tuple(layer.mlp.down_proj.weight.shape) == (24, 20)
    assert tuple(s.model.embed_tokens.weight.shape) == (64, 24)
    assert info["heads"] == [6, 2] and info["kv_heads"] == [2, 1] and len(info["block_influence"]) == 5
    ids = torch.randint(1, 64, (2, 7))
    with torch.no_grad():
        out = s(input_ids=ids).logits
    assert out.shape == (2, 7, 64) and torch.isfinite(out).all()
    # and it trains: one step lowers the loss on a batch
    opt = torch.optim.SGD(s.parameters(), lr=0.1)
    s.train()
    l0 = s(input_ids=ids, labels=ids).loss
    l0.backward()
    opt.step()
    with torch.no_grad():
        assert s(input_ids=ids, labels=ids).loss < l0


def test_kept_units_are_the_most_active_ones_and_stay_consistent_per_kv_group():
    from edgekd.llm.prune import PrunedLlamaOptions, importance, plan

    t = _teacher()
    imp = importance(t, _calib())
    assert imp["tokens"] > 0 and imp["heads"].shape == (5, 6) and imp["ffn"].shape == (5, 40)
    # heads 0..2 read KV head 0, heads 3..5 KV head 1: make group 1 the loud one, head 4 the quietest in it
    imp["heads"][:] = 0.1
    imp["heads"][:, 3], imp["heads"][:, 4], imp["heads"][:, 5] = 5.0, 1.0, 4.0
    imp["ffn"][:] = torch.arange(40, dtype=torch.float64)  # the last neurons are the most active
    p = plan(t, PrunedLlamaOptions(depth=0.4, layers="uniform", kv_heads=0.5, heads=0.67, ffn=0.25), imp)
    assert p["layers"] == [0, 4]  # uniform keeps the first and the last layer
    for j in p["layers"]:
        assert p["per_layer"][j]["kv"].tolist() == [1]
        assert p["per_layer"][j]["q"].tolist() == [3, 5]
        assert p["per_layer"][j]["ffn"].tolist() == list(range(30, 40))
    # block influence keeps the layers that change the residual stream most
    imp["layer"][:] = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3], dtype=torch.float64)
    assert plan(t, PrunedLlamaOptions(depth=0.4), imp)["layers"] == [1, 3]


def test_the_cut_keeps_the_chosen_units_weights():
    from edgekd.llm.prune import PrunedLlamaOptions, cut, importance, plan

    t = _teacher()
    p = plan(t, PrunedLlamaOptions(layers=[1, 3], heads=0.67, ffn=0.5), importance(t, _calib()))
    s = cut(t, p)
    q = p["per_layer"][3]["q"]
    cols = (q[:, None] * 8 + torch.arange(8)).flatten()
    assert torch.equal(s.model.layers[1].self_attn.q_proj.weight, t.model.layers[3].self_attn.q_proj.weight[cols])
    f = p["per_layer"][3]["ffn"]
    assert torch.equal(s.model.layers[1].mlp.down_proj.weight, t.model.layers[3].mlp.down_proj.weight[:, f])


@pytest.mark.parametrize("kwargs, needle", [
    ({"depth": 0}, "depth"), ({"ffn": 1.5}, "ffn"), ({"widht": 0.5}, "widht"), ({"layers": [1, 1]}, "distinct"),
    ({"layers": [0, 9]}, "beyond the teacher's 5 layers"), ({"layers": "random"}, "layers"),
])
def test_bad_options_are_config_errors(kwargs, needle):
    from edgekd.llm.prune import pruned_llama

    with pytest.raises(ConfigError) as e:
        pruned_llama(_teacher(), _calib(), **kwargs)
    assert needle in e.value.message + (e.value.hint or "")


def test_import_edgekd_llm_prune_stays_light():
    code = "import sys, edgekd, edgekd.llm.prune; print([m for m in ('torch', 'transformers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_hidden_state_term_runs_the_teacher_online_and_pulls_the_cut_layers_back(tmp_path):
    # a student of the cut's shape trained on hidden states alone, each layer against the teacher
    # layer it was cut from ('mapped'), with the teacher run on every batch: the distance falls
    from edgekd.config import DistillConfig, LossConfig
    from edgekd.distill.losses import build_losses
    from edgekd.llm.prune import pruned_llama
    from edgekd.llm.sequences import Example, distill
    from edgekd.tasks.text_generation import _resolve_loss_paths

    t = _teacher()
    g = torch.Generator().manual_seed(5)
    ex = [Example(torch.randint(1, 64, (10,), generator=g).tolist(), 4) for _ in range(12)]
    s, info = pruned_llama(t, _calib(), depth=0.4, ffn=0.5)
    torch.manual_seed(0)
    with torch.no_grad():  # a cut of a random teacher is already close to it: start the layers far away
        for n, p in s.model.layers.named_parameters():
            p.copy_(torch.ones_like(p) if n.endswith("norm.weight") else torch.randn_like(p) * 0.05)
    losses = [{"kind": "hidden_state", "weight": 1.0, "distance": "cosine",
               "layers": [["model.layers.0", "mapped"], ["model.layers.1", "mapped"]]}]
    resolved = _resolve_loss_paths(losses, s)
    assert resolved[0]["layers"] == [("model.layers.0", f"model.layers.{info['teacher_layers'][0]}"),
                                     ("model.layers.1", f"model.layers.{info['teacher_layers'][1]}")]
    ls = build_losses(resolved, s, t, torch.tensor([ex[0].ids]))
    assert ls.needs_online_teacher
    cfg = DistillConfig(epochs=3, batch_size=4, lr=3e-3, seed=0, losses=[LossConfig(**lo) for lo in losses])
    with pytest.raises(Exception, match="no teacher"):
        distill(s, ex, ex[:4], ls, cfg, 0)
    h = distill(s, ex, ex[:4], ls, cfg, 0, teacher=t)["history"]
    assert h[-1]["loss_hidden_state"] < 0.7 * h[0]["loss_hidden_state"]  # measured: 0.75 -> 0.39
    with pytest.raises(ConfigError, match="mapped"):
        _resolve_loss_paths([{"kind": "hidden_state", "layers": [["model.layers.7", "mapped"]]}], s)
