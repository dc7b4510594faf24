"""`edgekd init`: inspect the user's teacher and data and write a complete, commented recipe card.

The card is the only thing `edgekd init ... > card.yaml` writes to stdout: the user's code (factory
import, model build, weight loading, data loading, forward passes) runs with its stdout sent to
stderr, at the Python level and at file descriptor 1, so a loader's "Loaded pretrained weights for
..." cannot end up in the card.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from edgekd.config import MODEL_SOURCES, RecipeConfig, validate
from edgekd.errors import ConfigError, UserError

logger = logging.getLogger(__name__)
Log = Callable[[str], None]

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# Conventions a given image teacher may have been trained on, tried by `edgekd init` on a sample
# of the data: the one under which the teacher is most accurate is written into the card.
NORMALIZATIONS: dict[str, tuple[list[float], list[float]] | None] = {
    "pixels scaled to [0, 1] (torchvision ToTensor)": None,
    "ImageNet mean/std": IMAGENET,
    "pixels scaled to [-1, 1]": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
}
# The layout an unlabeled transfer set has for each data kind (edgekd.data.UNLABELED's loaders).
UNLABELED_LAYOUT: dict[str, str] = {
    "image-folder": "a folder of images (any layout)",
    "csv": "a .csv file with the same text/feature columns",
    "jsonl": "a .jsonl file with the same text/feature columns",
    "npz": "an .npz file with an array x",
    "hf-disk": "a save_to_disk folder with the same columns",
}


# --------------------------------------------------------------------------- the user's stdout


def _flush_c_stdio() -> None:
    """Flush C stdio buffers: a C extension's printf to a redirected (non-tty) stdout is block-buffered
    and would otherwise reach fd 1 after it is restored, i.e. inside the card."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
    except OSError:  # no symbol table to load (e.g. a static interpreter): nothing C-level to flush through
        return
    fflush = getattr(libc, "fflush", None)
    if fflush is not None:
        fflush(None)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what the code inside writes to stdout to stderr: `print` (sys.stdout) and, when fds 1 and 2
    are open, file descriptor 1 itself (C extensions, child processes). Both are restored on exit."""
    for stream in (sys.stdout, sys.__stdout__):
        if stream is not None:
            stream.flush()  # what was written before belongs on stdout
    saved: int | None = None
    try:
        os.fstat(1), os.fstat(2)
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # a closed fd 1 or 2 (daemonised): the Python-level redirect still holds
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            # Output still buffered for fd 1 was written while redirected: flush it to stderr first.
            if sys.__stdout__ is not None:
                sys.__stdout__.flush()
            _flush_c_stdio()
            os.dup2(saved, 1)
            os.close(saved)


# --------------------------------------------------------------------------- specs from the command line


def model_spec(spec: str, weights: str | None = None) -> dict[str, Any]:
    """A ModelRef dict from a command-line spec: FILE.onnx, an HF folder or pkg:NAME, a zoo
    architecture name, torchvision:NAME, timm:NAME, or package.module:function."""
    from edgekd.zoo import ARCHS

    p = Path(spec).expanduser()
    if spec.endswith(".onnx"):
        d: dict[str, Any] = {"onnx": spec}
    elif spec.startswith(("torchvision:", "timm:")):
        src, name = spec.split(":", 1)
        d = {src: name}
    elif spec.startswith("pkg:") or p.is_dir():
        d = {"hf": spec}
    elif spec in ARCHS:
        d = {"arch": spec}
    elif ":" in spec:
        d = {"factory": spec}
    else:
        raise ConfigError(f"cannot tell what model '{spec}' is",
                          hint="give FILE.onnx, a Hugging Face folder, pkg:NAME, package.module:function, "
                               f"torchvision:NAME, timm:NAME, or a zoo name ({', '.join(sorted(ARCHS))})")
    if weights:
        d["weights"] = weights
    return d


def _data_kind(p: Path) -> str | None:
    """The data kind of an existing file or folder (None for a file of an unknown type)."""
    if p.is_file():
        return {".csv": "csv", ".jsonl": "jsonl", ".npz": "npz"}.get(p.suffix)
    if not p.is_dir():
        return None
    if any((p / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")):
        return "hf-disk"
    for kind in ("csv", "jsonl", "npz"):
        if (p / f"train.{kind}").is_file():
            return kind
    return "image-folder"


def data_spec(path: str, label_column: str | None = None, text_column: str | None = None) -> dict[str, Any]:
    """A data section from a path: image folder, .csv, .jsonl, .npz, or a save_to_disk folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"data {path} does not exist", hint="give an image folder, a .csv/.jsonl/.npz file or a folder of them")
    kind = _data_kind(p)
    if kind is None:
        raise ConfigError(f"cannot tell the data format of {p.name}", hint="give .csv, .jsonl, .npz or a folder")
    d: dict[str, Any] = {"path": path, "kind": kind}
    if label_column:
        d["label_column"] = label_column
    if text_column:
        d["text_column"] = text_column
    return d


def unlabeled_spec(path: str, kind: str) -> str:
    """Check that `--unlabeled PATH` exists and is laid out like the labeled data of `kind` (the
    loaders read a transfer set in its data kind's layout); returns the path for data.unlabeled."""
    p = Path(path).expanduser()
    layout = UNLABELED_LAYOUT.get(kind)
    if layout is None:
        raise ConfigError(f"--unlabeled is not supported for data kind '{kind}'",
                          hint=f"kinds with an unlabeled transfer set: {', '.join(sorted(UNLABELED_LAYOUT))}")
    if not p.exists():
        raise ConfigError(f"--unlabeled {path} does not exist", hint=f"for {kind} data it is {layout}")
    found = _data_kind(p)
    # csv/jsonl/npz transfer sets are single files: a folder holding train.csv is not one
    if found != kind or (kind in ("csv", "jsonl", "npz") and not p.is_file()):
        what = f"a {p.suffix or 'suffixless'} file" if p.is_file() else f"a folder ({found} data)"
        raise ConfigError(f"--unlabeled {path} is {what}, but the labeled data is {kind}",
                          hint=f"give a transfer set in the labeled data's layout: {layout}")
    return path


# --------------------------------------------------------------------------- inspecting the data


def _columns_of(d: dict[str, Any]) -> dict[str, Any]:
    """For csv/jsonl: text column (if any) or the numeric feature columns, besides the label."""
    from edgekd.data import table

    p = Path(d["path"]).expanduser()
    f = p if p.is_file() else p / f"train.{d['kind']}"
    rec = table.READERS[d["kind"]][0](f)
    label = d.get("label_column", "label")
    if label not in rec and "prompt" in rec:  # prompts are distilled from a language model's answers
        raise UserError(f"{f} is a prompts file (a 'prompt' column, no '{label}'), and the teacher is not a causal "
                        "language model", hint="give a causal LM as --teacher (a Hugging Face folder whose config.json "
                                               "names a *ForCausalLM architecture, a .gguf file, or pkg:NAME)")
    if label not in rec:
        raise UserError(f"{f} has no column '{label}' (columns: {', '.join(list(rec)[:12])})",
                        hint="name the label column: --label-column NAME")
    if d.get("text_column") or "text" in rec:
        return {}
    numeric = []
    for c, vals in rec.items():
        if c == label:
            continue
        try:
            [float(v) for v in vals[:200]]
            numeric.append(c)
        except (TypeError, ValueError):
            continue
    if not numeric:
        raise UserError(f"{f} has no text column and no numeric columns besides '{label}'",
                        hint="name the text column: --text-column NAME")
    return {"feature_columns": numeric}


def _image_sizes(path: str) -> dict[tuple[int, int], int]:
    from PIL import Image

    from edgekd.data.images import is_image

    sizes: dict[tuple[int, int], int] = {}
    for f in sorted(Path(path).expanduser().rglob("*"))[:5000]:
        if is_image(f):
            try:
                with Image.open(f) as im:
                    sizes[(im.height, im.width)] = sizes.get((im.height, im.width), 0) + 1
            except Exception:  # an unreadable file is reported by the loader, with its name
                continue
    return sizes


def _hf_preprocessing(spec: str) -> dict[str, Any]:
    """mean/std/size of a Hugging Face image model's preprocessor_config.json, if it has one."""
    from edgekd.zoo.text import resolve_hf

    f = Path(resolve_hf(spec)) / "preprocessor_config.json"
    if not f.is_file():
        return {}
    cfg = json.loads(f.read_text())
    out: dict[str, Any] = {}
    if cfg.get("image_mean") and cfg.get("image_std"):
        out["mean"], out["std"] = list(cfg["image_mean"]), list(cfg["image_std"])
    size = cfg.get("size")
    if isinstance(size, dict) and "height" in size and "width" in size:
        out["image_size"] = [int(size["height"]), int(size["width"])]
    elif isinstance(size, int):
        out["image_size"] = [size, size]
    return out


def _accuracy(model, x, y) -> float:
    import torch

    with torch.no_grad():
        out = model.eval()(torch.as_tensor(x))
    return float((out.argmax(1).numpy() == y).mean())


# --------------------------------------------------------------------------- the draft


@dataclass
class Draft:
    """What `edgekd init` learns, step by step, and `render_card` writes."""

    teacher: str  # the user's specs, as typed (quoted in the card's header)
    data: str
    t: dict[str, Any]  # the teacher's ModelRef as given
    d: dict[str, Any] = field(default_factory=dict)  # the card's data section
    notes: dict[str, str] = field(default_factory=dict)  # per data key: why it has its value
    hf_encoder_only: bool = False  # an HF encoder without a head: fine-tuned as hf_text_classifier
    tref: dict[str, Any] = field(default_factory=dict)  # the teacher ModelRef the card names
    task: str = ""
    n_cls: int = 0
    class_names: list[str] = field(default_factory=list)
    channels: int = 0
    n_unlabeled: int = 0
    given: bool = False  # the teacher comes trained (weights, ONNX, an HF model with its head)
    acc_note: str = ""
    s: dict[str, Any] = field(default_factory=dict)  # the student's ModelRef
    s_note: str = ""
    teacher_train: dict[str, Any] | None = None
    name: str = ""
    search: dict[str, float] = field(default_factory=dict)  # the user's latency/size budget (student.search)


def teacher_spec(teacher: str, weights: str | None, teacher_kwargs: Any, student_kwargs: Any) -> dict[str, Any]:
    """The teacher's ModelRef dict, with --teacher-kwargs; both kwargs options must be mappings."""
    t = model_spec(teacher, weights)
    for what, kw in (("--teacher-kwargs", teacher_kwargs), ("--student-kwargs", student_kwargs)):
        if kw is not None and not isinstance(kw, dict):
            raise ConfigError(f"{what} must be a mapping, got {type(kw).__name__}", hint=f"e.g. {what} '{{num_classes: 10}}'")
    if teacher_kwargs:
        if "onnx" in t:
            raise ConfigError("an onnx teacher takes no kwargs (they are in the file)", hint="drop --teacher-kwargs")
        t["kwargs"] = dict(teacher_kwargs)
    return t


def inspect_data(dr: Draft, label_column: str | None, text_column: str | None, unlabeled: str | None) -> None:
    """The data section as far as the files tell it: kind, columns, tokenizer, image size, the HF
    model's own normalization, the unlabeled transfer set."""
    from edgekd.zoo.sources import hf_task

    d = dr.d = data_spec(dr.data, label_column, text_column)
    if unlabeled:
        d["unlabeled"] = unlabeled_spec(unlabeled, d["kind"])
    if "hf" in dr.t:
        try:
            hf_task(dr.t["hf"])
        except ConfigError:
            dr.hf_encoder_only = True
    if d["kind"] in ("csv", "jsonl"):
        d |= _columns_of(d)
    if d["kind"] in ("csv", "jsonl", "hf-disk") and not d.get("feature_columns"):
        if "hf" not in dr.t:
            raise UserError("text data needs the teacher's tokenizer, and this teacher is not a Hugging Face folder",
                            hint="add data.tokenizer (a tokenizer folder or pkg:NAME) to the card by hand")
        d["tokenizer"] = dr.t["hf"]
        dr.notes["tokenizer"] = "the teacher's own tokenizer"
    if d["kind"] == "image-folder":
        hf_pre = _hf_preprocessing(dr.t["hf"]) if "hf" in dr.t else {}
        if hf_pre:
            d |= hf_pre
            dr.notes["normalization"] = "from the model's preprocessor_config.json"
        sizes = _image_sizes(dr.data)
        if "image_size" not in d and len(sizes) > 1:
            d["image_size"] = list(max(sizes, key=lambda k: sizes[k]))
            dr.notes["image_size"] = f"images come in {len(sizes)} sizes; all resized to the most common one"


def build_teacher(dr: Draft, say: Log):
    """The teacher as a module (None for a headless HF encoder: built once the classes are known);
    an image teacher's first layer fixes the channels and, for ONNX, the input size."""
    import re

    from edgekd.config import ModelRef
    from edgekd.zoo.sources import build_model, wanted_input

    dr.tref = {"arch": "hf_text_classifier", "kwargs": {"hf": dr.t["hf"], "num_classes": 2}} if dr.hf_encoder_only else dr.t
    if dr.hf_encoder_only:
        return None
    model = build_model(ModelRef(**dr.tref), log=say)
    if dr.d["kind"] == "image-folder":
        m = re.match(r"\[N, (\d+), (\w+), (\w+)\]", wanted_input(model) or "")
        if m and "channels" not in dr.d:
            dr.d["channels"] = int(m.group(1))
        if m and m.group(2).isdigit() and m.group(3).isdigit():
            dr.d["image_size"] = [int(m.group(2)), int(m.group(3))]
            dr.notes["image_size"] = "the ONNX teacher's fixed input size"
    return model


def load_sample(dr: Draft, model, say: Log):
    """Load the data, check the teacher on it and name the task. Returns (splits, x, y, teacher):
    up to 256 labeled training samples and the teacher (built here when it is a headless encoder)."""
    import numpy as np

    from edgekd.config import DataConfig, ModelRef
    from edgekd.data import load
    from edgekd.zoo.sources import build_model, check_model_on_data

    splits = load(DataConfig(**dr.d))
    dr.n_cls, dr.class_names, dr.n_unlabeled = splits.num_classes, splits.class_names, splits.n_unlabeled
    if dr.hf_encoder_only:
        dr.tref["kwargs"]["num_classes"] = dr.n_cls
        model = build_model(ModelRef(**dr.tref), log=say)
    x, y = splits.x_train[: min(256, len(splits.x_train))], splits.y_train[: min(256, len(splits.x_train))]
    keep = y >= 0  # data.unlabeled samples carry label -1
    x, y = x[keep], y[keep]
    check_model_on_data(model, x, dr.n_cls, "teacher", dr.teacher)
    if splits.x_train.ndim == 4:
        dr.task, dr.channels = "image-classification", int(splits.x_train.shape[1])
    elif np.issubdtype(splits.x_train.dtype, np.integer):
        dr.task = "text-classification"
    else:
        dr.task = "tabular-classification"
    dr.given = bool(dr.t.get("weights") or dr.t.get("onnx") or ("hf" in dr.t and not dr.hf_encoder_only))
    return splits, x, y, model


def sniff_normalization(dr: Draft, model, x, y) -> None:
    """A given image teacher: write the normalization under which it is most accurate on the sample.
    Any other given teacher: note its accuracy on the sample."""
    import numpy as np

    if not dr.given:
        return
    if dr.task != "image-classification" or "normalization" in dr.notes:
        dr.acc_note = f"{_accuracy(model, x, y):.1%} on {len(x)} training samples"
        return
    c = dr.channels
    scores = {}
    for label, ms in NORMALIZATIONS.items():
        if ms is None:
            xs = x
        else:
            mean = np.asarray(ms[0][:c], np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(ms[1][:c], np.float32).reshape(1, -1, 1, 1)
            xs = ((x - mean) / std).astype(np.float32)
        scores[label] = _accuracy(model, xs, y)
    best = max(scores, key=lambda k: scores[k])
    chosen = NORMALIZATIONS[best]
    if chosen is not None:
        dr.d["mean"], dr.d["std"] = [round(v, 4) for v in chosen[0][:c]], [round(v, 4) for v in chosen[1][:c]]
    dr.notes["normalization"] = (f"{best}: the teacher scored " + ", ".join(f"{v:.1%} with {k.split(' (')[0]}" for k, v in scores.items())
                                 + f" on {len(x)} training images")


def pick_student(dr: Draft, splits, student: str | None, student_weights: str | None,
                 student_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The student's ModelRef: the user's, or a small zoo model that fits the data."""
    import numpy as np

    if student:
        s = model_spec(student, student_weights)
        if student_kwargs:
            s["kwargs"] = dict(student_kwargs)
        dr.s_note = "your student"
    elif dr.task == "image-classification":
        s = {"arch": "small_cnn", "kwargs": {"in_channels": dr.channels, "num_classes": dr.n_cls}}
        dr.s_note = "a small zoo CNN; name your own with --student package.module:function"
    elif dr.task == "tabular-classification":
        s = {"arch": "mlp", "kwargs": {"in_features": int(np.prod(splits.x_train.shape[1:])), "num_classes": dr.n_cls, "hidden": [64]}}
        dr.s_note = "a small zoo MLP; name your own with --student package.module:function"
    else:
        hf_src = dr.t.get("hf")
        if not hf_src:
            raise UserError("a text teacher that is not a Hugging Face folder needs --student", hint="--student package.module:function")
        s = {"arch": "bert_student", "kwargs": {"hf": hf_src, "num_classes": dr.n_cls, "num_layers": 2,
                                                 "init_from": "trained_teacher" if dr.hf_encoder_only else "teacher"}}
        dr.s_note = "a 2-layer BERT " + ("cut out of the fine-tuned teacher" if dr.hf_encoder_only
                                         else "started from the teacher's pretrained layers")
    if student_kwargs and not student:
        s["kwargs"] = {**s.get("kwargs", {}), **student_kwargs}  # the user's kwargs override those read from the data
    dr.s = s
    return s


# --------------------------------------------------------------------------- rendering


def _y(v: Any) -> str:
    return json.dumps(v)  # JSON is valid YAML and quotes what needs quoting


def _data_lines(dr: Draft) -> list[str]:
    d, notes = dr.d, dr.notes
    lines = ["data:", f"  kind: {d['kind']}", f"  path: {_y(d['path'])}",
             f"  # {dr.n_cls} classes, in the teacher's output order: check them (they default to sorted names)",
             f"  classes: {_y(dr.class_names)}"]
    if dr.task == "image-classification":
        lines.append(f"  channels: {dr.channels}")
        if d.get("image_size"):
            lines.append(f"  image_size: {_y(d['image_size'])}  # [height, width]" + (f"; {notes['image_size']}" if "image_size" in notes else ""))
        if d.get("mean"):
            lines += [f"  # normalization: {notes.get('normalization', '')}", f"  mean: {_y(d['mean'])}", f"  std: {_y(d['std'])}"]
        else:
            lines.append(f"  # normalization: {notes.get('normalization', 'pixels scaled to [0, 1]')} (no mean/std: [0, 1])")
    for k in ("label_column", "text_column", "feature_columns", "tokenizer"):
        if d.get(k):
            lines.append(f"  {k}: {_y(d[k])}" + (f"  # {notes[k]}" if k in notes else ""))
    if d["kind"] in ("csv", "jsonl") and "label_column" not in d:
        lines.append('  label_column: "label"')
    if dr.task == "text-classification":
        lines.append("  max_length: 64  # tokens per sample")
    lines += ["  val_fraction: 0.1", "  test_fraction: 0.2  # held out when the data has no test split", "  seed: 0"]
    if d.get("unlabeled"):
        lines.append(f"  unlabeled: {_y(d['unlabeled'])}  # {dr.n_unlabeled} samples without labels: "
                     "the student learns the teacher's soft labels on them")
    else:
        lines.append("  # unlabeled: PATH  # a transfer set without labels: the student learns the teacher's soft labels on it")
    return lines


def _model_lines(ref: dict[str, Any]) -> list[str]:
    lines = [f"  {k}: {_y(ref[k])}" for k in (*MODEL_SOURCES, "weights") if k in ref]
    if ref.get("kwargs"):
        lines.append(f"  kwargs: {_y(ref['kwargs'])}")
    return lines


def _search_lines(dr: Draft) -> list[str]:
    if not dr.search:
        return []
    lines = ["  # the student is sized to this budget: `edgekd build` measures candidate widths/depths of the student",
             "  # above (and stem strides on large images) untrained on the target runtime, ranks the largest fitting",
             "  # ones by a short distillation and trains the winner; the budget is checked again on the shipped artifact",
             "  search:"]
    lines += [f"    {k}: {_y(v)}" for k, v in dr.search.items()]
    return lines


def budget_search(student: str | None, student_kwargs: dict[str, Any] | None, latency_budget: str | None,
                  size_budget: str | None) -> dict[str, float]:
    """student.search for `edgekd init --latency-budget/--size-budget` (units parsed: exit 2 on a bad value).
    The search space is the zoo student's widths and depths; a student of the user's own needs its ranges."""
    out = _parse_budgets(latency_budget, size_budget)
    if out and student:
        raise ConfigError("--latency-budget/--size-budget size edgekd's zoo student; your --student has no search space",
                          hint="leave --student out, or write student.search.kwargs ranges (e.g. {width_mult: [0.5, 1]}) "
                               "and the budget into the card yourself")
    return out


def _parse_budgets(latency_budget: str | None, size_budget: str | None) -> dict[str, float]:
    """{latency_ms, size_kib} of the flags given (exit 2 on a bad unit)."""
    from edgekd.config import parse_latency_ms, parse_size_kib

    out: dict[str, float] = {}
    for key, flag, given, parse in (("latency_ms", "--latency-budget", latency_budget, parse_latency_ms),
                                    ("size_kib", "--size-budget", size_budget, parse_size_kib)):
        if given is not None:
            try:
                out[key] = parse(given)
            except ValueError as e:
                raise ConfigError(f"{flag}: {e}", hint="e.g. --latency-budget 0.5ms, --size-budget 64KiB") from None
    return out


def _teacher_lines(dr: Draft) -> list[str]:
    lines = ["teacher:", *_model_lines(dr.tref)]
    if dr.teacher_train:
        lines.append("  # trained first: it has no weights yet" if not dr.hf_encoder_only else
                     "  # a pretrained encoder with a fresh head: fine-tuned first")
        lines.append(f"  train: {_y(dr.teacher_train)}")
    else:
        lines.append("  # no `train`: the teacher is used as given" + (f" ({dr.acc_note})" if dr.acc_note else "")
                     + "; its accuracy is measured and reported")
    return lines


def _training_lines(dr: Draft) -> list[str]:
    lines = ["distill:", "  epochs: 10", "  batch_size: 64", "  lr: 0.003" if dr.task != "text-classification" else "  lr: 0.0001",
             "  seed: 0"]
    if "onnx" in dr.t:
        lines += ["  # an ONNX teacher gives logits only: onnxruntime writes them once into the teacher-logit cache",
                  "  teacher_cache: {enabled: true}", "  augment: false"]
    else:
        # The losses below read the teacher's logits only: one teacher pass fills the cache and the epochs never
        # run the teacher (bench_byo: a ResNet-18 teacher cost 377 s per epoch online, 230 s cached, on a loaded
        # host). Turn it off for feature/attention/hidden_state/relation losses, which need the teacher online.
        lines += ["  teacher_cache: {enabled: true}  # the teacher's logits, computed once", "  augment: false"]
    # Half the weight on the true labels, T=1: a teacher of the user's is of unknown strength against the student, and
    # a weak one's soft labels at T=4 can pull the student below labels alone. Chosen on validation (bench_byo_budget:
    # a re-headed EfficientNet-Lite0 at 85.3% and its budget-sized student, 3 seeds, mean validation gain over the
    # labels-only control): soft 0.5 at T=1 -0.27 pt, at T=2 -0.33, soft 0.25 at T=1 -0.53, at T=2 -0.60, soft 0.9
    # at T=4 -1.00 (500 validation images: 0.2 pt is one image): no mix beat labels alone on validation for that
    # pair; the README gives their test gains.
    lines += ["  losses:  # soft labels from the teacher + the true labels (half each: a teacher of unknown strength)",
              "    - {kind: soft_label, weight: 0.5, temperature: 1.0}",
              "    - {kind: hard_label, weight: 0.5}",
              "quantize:",
              "  accuracy_budget: 1.0  # points of accuracy a quantized student may lose vs its FP32 version",
              "  calibration_samples: 128",
              "quick:  # --quick (smoke test): fewer epochs",
              "  distill.epochs: 2"]
    if dr.teacher_train:
        lines.append("  teacher.train.epochs: 1")
    return lines


def render_card(dr: Draft) -> str:
    """The card's YAML text, validated: a card that does not load is never handed out."""
    import yaml

    s_src = next(dr.s[k] for k in MODEL_SOURCES if k in dr.s)
    lines = [
        f"# Recipe card written by `edgekd init` for {dr.teacher} on {dr.data}.",
        "# Edit and commit it: it is the reproducible record of this build (the build copies it into its folder).",
        "# Paths are relative to the folder you run `edgekd build` from.",
        "schema_version: 1",
        f"name: {_y(dr.name)}",
        f"description: {_y(f'{dr.task}: {dr.teacher} -> {s_src} on {dr.data}')}",
        f"task: {dr.task}",
        *_data_lines(dr),
        *_teacher_lines(dr),
        f"student:  # {dr.s_note}",
        *_model_lines(dr.s),
        *_search_lines(dr),
        *_training_lines(dr),
    ]
    text = "\n".join(lines) + "\n"
    validate(RecipeConfig, yaml.safe_load(text), "edgekd init output")
    return text


# --------------------------------------------------------------------------- a language-model teacher


def _causal_lm(teacher: str) -> dict[str, Any] | None:
    """Where a causal-LM teacher's weights are (edgekd.llm.models.resolve_source), or None for any other teacher."""
    from edgekd.llm.card import causal_lm_source

    return causal_lm_source(teacher)


def _lm_card(teacher: str, src: dict[str, Any], data: str, *, weights: str | None, student: str | None,
             student_weights: str | None, name: str | None, label_column: str | None, text_column: str | None,
             teacher_kwargs: Any, student_kwargs: Any, unlabeled: str | None, latency_budget: str | None,
             size_budget: str | None) -> str:
    """The text-generation card (edgekd.llm.card). Options that only mean something for a classifier are exit 2,
    not silently dropped."""
    from edgekd.llm.card import lm_card

    # a budget sizes the cut of the teacher (depth x FFN fractions, text_generation/search.py); the units are parsed
    # here, exit 2 on a bad value; a student of the user's own is refused by lm_card (it has nothing to cut)
    search = _parse_budgets(latency_budget, size_budget)
    for flag, given in (("--weights", weights), ("--student-weights", student_weights), ("--teacher-kwargs", teacher_kwargs),
                        ("--unlabeled", unlabeled), ("--label-column", label_column), ("--text-column", text_column)):
        if given:
            raise ConfigError(f"{flag} does not apply to a language-model teacher ({teacher})",
                              hint="a causal LM is distilled on its answers to a JSONL of prompts: drop " + flag)
    if student_kwargs is not None and not isinstance(student_kwargs, dict):
        raise ConfigError(f"--student-kwargs must be a mapping, got {type(student_kwargs).__name__}",
                          hint="e.g. --student-kwargs '{depth: 0.3, ffn: 0.5}'")
    with stdout_to_stderr():
        return lm_card(teacher, src, data, name=name, student=student, student_kwargs_=student_kwargs, search=search)


# --------------------------------------------------------------------------- the command


def init_card(teacher: str, data: str, weights: str | None = None, student: str | None = None,
              student_weights: str | None = None, name: str | None = None, label_column: str | None = None,
              text_column: str | None = None, log: Log | None = None, teacher_kwargs: dict[str, Any] | None = None,
              student_kwargs: dict[str, Any] | None = None, unlabeled: str | None = None,
              latency_budget: str | None = None, size_budget: str | None = None) -> str:
    """Inspect a teacher and a dataset and return a complete, commented recipe card (YAML text)
    that `edgekd build` takes unchanged. The card is validated before it is returned.
    `teacher_kwargs`/`student_kwargs` are passed to the models' builders (e.g. num_classes);
    `unlabeled` is a transfer set without labels in the data's layout (written as data.unlabeled).
    `latency_budget`/`size_budget` ("0.5ms", "64KiB") become student.search: the build sizes the student to them.
    A causal language model (an HF *ForCausalLM folder, a .gguf file, pkg:NAME carrying one) with a prompts JSONL
    gets a text-generation card instead (edgekd.llm.card), read from its configuration without loading weights.
    The user's code runs with its stdout sent to stderr (`stdout_to_stderr`)."""
    from edgekd.config import ModelRef
    from edgekd.zoo.sources import build_model, check_model_on_data

    lm = _causal_lm(teacher)
    if lm is not None:
        return _lm_card(teacher, lm, data, weights=weights, student=student, student_weights=student_weights, name=name,
                        label_column=label_column, text_column=text_column, teacher_kwargs=teacher_kwargs,
                        student_kwargs=student_kwargs, unlabeled=unlabeled, latency_budget=latency_budget,
                        size_budget=size_budget)
    say = log or logger.info
    dr = Draft(teacher=teacher, data=data, t=teacher_spec(teacher, weights, teacher_kwargs, student_kwargs),
               search=budget_search(student, student_kwargs, latency_budget, size_budget))
    with stdout_to_stderr():
        inspect_data(dr, label_column, text_column, unlabeled)
        model = build_teacher(dr, say)
        splits, x, y, model = load_sample(dr, model, say)
        sniff_normalization(dr, model, x, y)
        s = pick_student(dr, splits, student, student_weights, student_kwargs)
        check_model_on_data(build_model(ModelRef(**s), log=say), x, dr.n_cls, "student", student or s.get("arch", ""))
    dr.name = name or f"{Path(data.rstrip('/')).stem or 'my'}-byo".replace(" ", "-")
    if not dr.given:
        dr.teacher_train = ({"epochs": 2, "batch_size": 32, "lr": 5e-5, "weight_decay": 0.01, "seed": 0} if dr.hf_encoder_only
                            else {"epochs": 10, "batch_size": 64, "lr": 0.003, "seed": 0})
    return render_card(dr)
