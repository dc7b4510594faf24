"""Student `pruned_llama`: a Llama-family causal LM cut out of the teacher (Minitron-style).

The same structured pruning minilm-sentiment applies to BERT (edgekd/zoo/text.py), for decoder
LMs: the teacher runs once on calibration sequences (training prompts with the teacher's answers)
and the student keeps

- depth: `depth` x the teacher's layers, chosen by `layers`: "block_influence" (ShortGPT: the
  layers that change the residual stream most, 1 - cos(input, output) averaged over tokens),
  "uniform" (evenly spaced, first and last included), or an explicit list of teacher layers;
- attention heads, respecting grouped-query attention: `kv_heads` x the KV groups (whole groups:
  a KV head and the query heads that read it), and in every kept group `heads` x its query heads
  (the same number per group, so the student is a GQA model again); ranked by the L2 norm of each
  head's context vector (the input of o_proj);
- FFN neurons: `ffn` x the intermediate size, ranked by mean |act(gate) * up| (the input of
  down_proj); gate/up rows and down_proj columns are sliced;
- hidden channels: `hidden` x the residual width (1.0 keeps it), ranked by mean |x| over every
  RMSNorm output; embeddings (tied with the LM head), every projection and norm are sliced.

Importance is the mean activation magnitude over the calibration tokens (padding excluded), as in
Minitron and `zoo.text.activation_importance`. Head size is the teacher's (a config with an
explicit head_dim). With every fraction 1.0 the cut model is the teacher, logits equal.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekd.errors import ConfigError, StageError


class PrunedLlamaOptions(BaseModel):
    """student.kwargs of `arch: pruned_llama` (unknown keys are an error listing the valid ones)."""

    model_config = ConfigDict(extra="forbid")
    depth: float = Field(0.4, gt=0, le=1, description="fraction of the teacher's layers kept")
    layers: Literal["block_influence", "uniform"] | list[int] = Field(
        "block_influence", description="which layers: block_influence (ShortGPT ranking), uniform, or a list "
                                       "of teacher layer indices (then depth is ignored)")
    kv_heads: float = Field(1.0, gt=0, le=1, description="fraction of KV groups (GQA) kept, whole groups")
    heads: float = Field(1.0, gt=0, le=1, description="fraction of query heads kept in every kept KV group")
    ffn: float = Field(1.0, gt=0, le=1, description="fraction of FFN (intermediate) neurons kept")
    hidden: float = Field(1.0, gt=0, le=1, description="fraction of residual (hidden) channels kept")
    calibration_samples: int = Field(64, ge=1, description="training sequences the importance is measured on")

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or len(set(v)) != len(v) or any(i < 0 for i in v)):
            raise ValueError("layers must be distinct non-negative teacher layer indices")
        return v


def parse_options(kwargs: dict[str, Any]) -> PrunedLlamaOptions:
    try:
        return PrunedLlamaOptions(**kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "kwargs"
        valid = ", ".join(PrunedLlamaOptions.model_fields)
        raise ConfigError(f"student.kwargs.{where}: {err['msg']}", hint=f"pruned_llama takes: {valid}") from None


def _count(n: int, frac: float) -> int:
    return max(1, min(n, int(round(n * frac))))


def _attn_layout(cfg) -> tuple[int, int, int]:
    n_h, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_h
    return n_h, n_kv, head_dim


def _check_family(teacher) -> None:
    layers = getattr(getattr(teacher, "model", None), "layers", None)
    ok = layers is not None and len(layers) > 0 and all(
        hasattr(layers[0], a) for a in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm"))
    ok = ok and all(hasattr(layers[0].self_attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
    ok = ok and all(hasattr(layers[0].mlp, p) for p in ("gate_proj", "up_proj", "down_proj"))
    if not ok or getattr(teacher.config, "model_type", "") not in ("llama", "mistral", "qwen2"):
        raise ConfigError(f"pruned_llama cuts Llama-family teachers; this one is '{getattr(teacher.config, 'model_type', '?')}'",
                          hint="use student arch tiny_llama (a fresh small Llama) for other teachers")
    if any(getattr(layers[0].self_attn, p).bias is not None for p in ("q_proj", "k_proj", "v_proj", "o_proj")) \
            or any(getattr(layers[0].mlp, p).bias is not None for p in ("gate_proj", "up_proj", "down_proj")):
        if teacher.config.model_type != "qwen2":
            raise ConfigError("pruned_llama expects bias-free projections", hint="use student arch tiny_llama")


def importance(teacher, batches: list[tuple[Any, Any]]) -> dict[str, Any]:
    """Mean activation magnitudes over the non-padding tokens of `batches` [(ids, mask), ...].

    layer[i]: block influence of teacher layer i (1 - cos(input, output) of the residual stream);
    heads[i]: per query head, the L2 norm of its context vector; ffn[i]: per neuron, |act(gate)*up|;
    hidden: per residual channel, |x| summed over every RMSNorm output."""
    import torch

    cfg = teacher.config
    n_layers = cfg.num_hidden_layers
    n_h, _, head_dim = _attn_layout(cfg)
    layers = teacher.model.layers
    acc = {"tokens": 0.0, "hidden": torch.zeros(cfg.hidden_size, dtype=torch.float64),
           "heads": torch.zeros(n_layers, n_h, dtype=torch.float64),
           "ffn": torch.zeros(n_layers, cfg.intermediate_size, dtype=torch.float64),
           "layer": torch.zeros(n_layers, dtype=torch.float64)}
    state: dict[str, Any] = {}

    def masked_sum(x):  # [B, L, ...] -> sum over real tokens
        m = state["mask"].reshape(*state["mask"].shape, *([1] * (x.dim() - 2))).to(x.dtype)
        return (x * m).sum(dim=(0, 1)).double()

    hooks = []
    for i, layer in enumerate(layers):
        def o_pre(_m, args, i=i):
            x = args[0]
            acc["heads"][i] += masked_sum(x.reshape(*x.shape[:2], n_h, head_dim).norm(dim=-1))

        def d_pre(_m, args, i=i):
            acc["ffn"][i] += masked_sum(args[0].abs())

        def block(_m, args, kwargs, out, i=i):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = out[0] if isinstance(out, tuple) else out
            acc["layer"][i] += masked_sum(1 - torch.nn.functional.cosine_similarity(h_in, h_out, dim=-1))

        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(o_pre))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(d_pre))
        hooks.append(layer.register_forward_hook(block, with_kwargs=True))
    norms = [m for l_ in layers for m in (l_.input_layernorm, l_.post_attention_layernorm)] + [teacher.model.norm]
    for m in norms:
        hooks.append(m.register_forward_hook(lambda _m, _a, out: acc.__setitem__("hidden", acc["hidden"] + masked_sum(out.abs()))))
    was = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            for ids, mask in batches:
                state["mask"] = mask.bool()
                acc["tokens"] += float(mask.sum())
                teacher.model(input_ids=ids, attention_mask=mask)
    finally:
        for h in hooks:
            h.remove()
        teacher.train(was)
    n = max(acc["tokens"], 1.0)
    return {"tokens": acc["tokens"], "hidden": acc["hidden"] / n, "heads": acc["heads"] / n, "ffn": acc["ffn"] / n,
            "layer": acc["layer"] / n}


def choose_layers(opts: PrunedLlamaOptions, n_teacher: int, influence=None) -> list[int]:
    if isinstance(opts.layers, list):
        bad = [i for i in opts.layers if i >= n_teacher]
        if bad:
            raise ConfigError(f"student.kwargs.layers {bad} are beyond the teacher's {n_teacher} layers",
                              hint=f"teacher layers are 0..{n_teacher - 1}")
        return sorted(opts.layers)
    n = _count(n_teacher, opts.depth)
    if opts.layers == "uniform" or n == n_teacher:
        if n == 1:
            return [n_teacher - 1]
        return sorted({round(k * (n_teacher - 1) / (n - 1)) for k in range(n)})
    import torch

    return sorted(torch.topk(influence, n).indices.tolist())


def plan(teacher, opts: PrunedLlamaOptions, imp: dict[str, Any] | None) -> dict[str, Any]:
    """What to keep (indices ascending, in the teacher's order): layers, hidden channels, KV groups
    and query heads per layer, FFN neurons per layer. `imp` may be None only when nothing is cut."""
    import torch

    cfg = teacher.config
    n_h, n_kv, head_dim = _attn_layout(cfg)
    group = n_h // n_kv
    full = all(f == 1.0 for f in (opts.depth, opts.kv_heads, opts.heads, opts.ffn, opts.hidden)) \
        and not isinstance(opts.layers, list)
    if imp is None and not full:
        raise StageError("pruning needs the teacher's activation importance", hint="this is a bug in edgekd")

    def top(v, k: int):
        return torch.topk(v, k).indices.sort().values

    layers = choose_layers(opts, cfg.num_hidden_layers, None if imp is None else imp["layer"])
    kv_keep, h_keep, i_keep = _count(n_kv, opts.kv_heads), _count(group, opts.heads), _count(cfg.intermediate_size, opts.ffn)
    p: dict[str, Any] = {"layers": layers, "kv_heads": kv_keep, "heads": kv_keep * h_keep, "head_dim": head_dim,
                         "intermediate": i_keep, "hidden": _count(cfg.hidden_size, opts.hidden), "per_layer": {}}
    p["hidden_idx"] = (torch.arange(cfg.hidden_size) if imp is None or p["hidden"] == cfg.hidden_size
                       else top(imp["hidden"], p["hidden"]))
    for j in layers:
        if imp is None:
            kv = torch.arange(n_kv)
            q = torch.arange(n_h)
            ffn = torch.arange(cfg.intermediate_size)
        else:
            hs = imp["heads"][j].reshape(n_kv, group)  # query head h reads KV head h // group
            kv = top(hs.sum(1), kv_keep)
            q = torch.cat([g * group + top(hs[g], h_keep) for g in kv.tolist()])
            ffn = top(imp["ffn"][j], i_keep)
        p["per_layer"][j] = {"kv": kv, "q": q, "ffn": ffn}
    return p


def _cols(heads, head_dim: int):
    import torch

    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def cut(teacher, p: dict[str, Any]):
    """A new LlamaForCausalLM holding the slices of `teacher` that plan `p` keeps."""
    import torch
    from transformers import AutoModelForCausalLM

    tc = teacher.config
    cfg = tc.__class__.from_dict(tc.to_dict())
    cfg.num_hidden_layers = len(p["layers"])
    cfg.hidden_size = p["hidden"]
    cfg.num_attention_heads = p["heads"]
    cfg.num_key_value_heads = p["kv_heads"]
    cfg.head_dim = p["head_dim"]
    cfg.intermediate_size = p["intermediate"]
    for name in ("layer_types", "max_window_layers"):  # per-layer lists of some families
        if isinstance(getattr(cfg, name, None), list):
            setattr(cfg, name, [getattr(tc, name)[j] for j in p["layers"]])
    student = AutoModelForCausalLM.from_config(cfg, torch_dtype=next(teacher.parameters()).dtype)
    hid = p["hidden_idx"]
    hd = p["head_dim"]
    with torch.no_grad():
        def put(dst, w):
            if dst.shape != w.shape:
                raise StageError(f"pruning produced {tuple(w.shape)} for a {tuple(dst.shape)} weight",
                                 hint="this is a bug in edgekd")
            dst.copy_(w)

        put(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight[:, hid])
        put(student.model.norm.weight, teacher.model.norm.weight[hid])
        if not cfg.tie_word_embeddings:
            put(student.lm_head.weight, teacher.lm_head.weight[:, hid])
        for i, j in enumerate(p["layers"]):
            s, t = student.model.layers[i], teacher.model.layers[j]
            kv, q, ffn = (p["per_layer"][j][k] for k in ("kv", "q", "ffn"))
            qc, kc = _cols(q, hd), _cols(kv, hd)
            put(s.input_layernorm.weight, t.input_layernorm.weight[hid])
            put(s.post_attention_layernorm.weight, t.post_attention_layernorm.weight[hid])
            put(s.self_attn.q_proj.weight, t.self_attn.q_proj.weight[qc][:, hid])
            put(s.self_attn.k_proj.weight, t.self_attn.k_proj.weight[kc][:, hid])
            put(s.self_attn.v_proj.weight, t.self_attn.v_proj.weight[kc][:, hid])
            put(s.self_attn.o_proj.weight, t.self_attn.o_proj.weight[hid][:, qc])
            for name, rows in (("q_proj", qc), ("k_proj", kc), ("v_proj", kc)):
                b = getattr(t.self_attn, name).bias
                if b is not None:
                    put(getattr(s.self_attn, name).bias, b[rows])
            put(s.mlp.gate_proj.weight, t.mlp.gate_proj.weight[ffn][:, hid])
            put(s.mlp.up_proj.weight, t.mlp.up_proj.weight[ffn][:, hid])
            put(s.mlp.down_proj.weight, t.mlp.down_proj.weight[hid][:, ffn])
    if cfg.tie_word_embeddings:
        student.tie_weights()
    student.generation_config = teacher.generation_config
    student.eval()
    return student


def calibration_batches(examples, pad: int, n: int, batch_size: int = 8) -> list[tuple[Any, Any]]:
    """(ids, mask) batches of the first `n` sequences (edgekd.llm.sequences.Example), right padded."""
    import torch

    ex = examples[:n]
    out = []
    for k in range(0, len(ex), batch_size):
        chunk = ex[k:k + batch_size]
        width = max(len(e.ids) for e in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, e in enumerate(chunk):
            ids[r, :len(e.ids)] = torch.tensor(e.ids)
            mask[r, :len(e.ids)] = 1
        out.append((ids, mask))
    return out


def pruned_llama(teacher, calib: list[tuple[Any, Any]] | None, **kwargs) -> tuple[Any, dict[str, Any]]:
    """The student cut out of `teacher` per student.kwargs, and a summary of the cut (for the report)."""
    opts = parse_options(kwargs)
    _check_family(teacher)
    needs_imp = not (all(f == 1.0 for f in (opts.depth, opts.kv_heads, opts.heads, opts.ffn, opts.hidden))
                     and not isinstance(opts.layers, list))
    imp = None
    if needs_imp:
        if not calib:
            raise ConfigError("pruning the teacher needs calibration sequences", hint="give more training prompts")
        imp = importance(teacher, calib)
    p = plan(teacher, opts, imp)
    student = cut(teacher, p)
    tc = teacher.config
    n_h, n_kv, _ = _attn_layout(tc)
    info = {"teacher_layers": p["layers"], "layers": [tc.num_hidden_layers, len(p["layers"])],
            "heads": [n_h, p["heads"]], "kv_heads": [n_kv, p["kv_heads"]],
            "intermediate": [tc.intermediate_size, p["intermediate"]], "hidden": [tc.hidden_size, p["hidden"]],
            "calibration_tokens": None if imp is None else int(imp["tokens"]), "select": opts.layers
            if not isinstance(opts.layers, list) else "list"}
    if imp is not None:
        info["block_influence"] = [round(float(x), 5) for x in imp["layer"]]
    student.teacher_layers = list(p["layers"])
    return student, info
