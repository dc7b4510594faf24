"""Find and load recipe cards (models/*.yaml) and target cards (targets/*.toml) by name or path.

Shipped cards live in the top-level `models/` and `targets/` folders of the source tree; the wheel
carries them as the data packages `edgekd._cards.models` / `edgekd._cards.targets` (see
pyproject.toml), so `edgekd build --target cpu` works from any directory after `pip install .`.
"""
from __future__ import annotations

import difflib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from edgekd.config import MODEL_SOURCES, RecipeConfig, TargetConfig, apply_overrides, validate
from edgekd.errors import ConfigError, UserError

_SRC_ROOT = Path(__file__).resolve().parent.parent
# Settings every --quick build gets before the recipe's own quick block and the user's --set.
QUICK_DEFAULTS: dict[str, Any] = {"distill.control": False}


def shipped_dir(kind: str) -> Path:
    src = _SRC_ROOT / kind
    if src.is_dir() and (_SRC_ROOT / "pyproject.toml").is_file():
        return src
    return Path(str(resources.files("edgekd._cards") / kind))


def shipped(kind: str) -> dict[str, Path]:
    """Shipped cards of a kind ('models' or 'targets'), by name."""
    ext = ".yaml" if kind == "models" else ".toml"
    d = shipped_dir(kind)
    return {p.stem: p for p in sorted(d.glob(f"*{ext}"))} if d.is_dir() else {}


def _resolve(ref: str, kind: str) -> Path:
    p = Path(ref).expanduser()
    if p.suffix in (".yaml", ".yml", ".toml") or "/" in ref:
        if not p.is_file():
            raise ConfigError(f"card file not found: {ref}", hint="give a shipped card name or an existing file path")
        return p
    cards = shipped(kind)
    if ref not in cards:
        what = "recipe" if kind == "models" else "target"
        close = difflib.get_close_matches(ref, list(cards), n=2)
        hint = (f"did you mean {' or '.join(close)}? " if close else "") + f"shipped {what}s: {', '.join(cards) or 'none'}"
        raise ConfigError(f"unknown {what} '{ref}'", hint=hint)
    return cards[ref]


def card_file(ref: str) -> Path:
    """The file of a recipe card given by name or path (the build copies it as its record)."""
    return _resolve(ref, "models")


def read_raw(path: Path) -> dict[str, Any]:
    """Parse a card file (YAML safe_load or TOML): data only, never code."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start} is 0x{e.object[e.start]:02x})",
                          hint="save the card as UTF-8; cards are YAML or TOML text") from None
    except OSError as e:
        raise ConfigError(f"cannot read card {path}: {e.strerror or e}", hint="check the path and its permissions") from None
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}", hint="check the card's syntax") from None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}", hint="check indentation and quoting in the recipe") from None
    return data if data is not None else {}


def load_recipe(ref: str, overrides: dict[str, Any] | None = None, quick: bool = False) -> RecipeConfig:
    """Load a recipe by name or path; apply its `quick` block (with --quick) then the user's overrides."""
    path = _resolve(ref, "models")
    raw = read_raw(path)
    if quick:
        q = raw.get("quick") or {}
        if not isinstance(q, dict):
            raise ConfigError(f"{path}: 'quick' must be a mapping of dotted keys to values", hint="see models/fashion-cnn.yaml")
        # --quick is for smoke tests: the labels-only control would double the distill time, so it is
        # off unless the recipe's quick block or --set asks for it (both are applied after this default).
        raw = apply_overrides(raw, {**QUICK_DEFAULTS, **q}, RecipeConfig)
        q = {**QUICK_DEFAULTS, **q}
    else:
        q = {}
    split_over = {k: v for k, v in (overrides or {}).items() if not k.startswith("target.")}
    raw = apply_overrides(raw, split_over, RecipeConfig)
    recipe = validate(RecipeConfig, raw, str(path))
    if recipe.teacher.uses_shipped:
        # The shipped weights are what the card's teacher settings made: an override of those
        # settings asks for another teacher, which the weights are not. Say so rather than
        # silently measure the shipped one.
        def teacher_keys(over: dict[str, Any]) -> list[str]:
            return [k for k in over if k.startswith("teacher.") and not k.startswith("teacher.shipped")
                    and k != "teacher.retrain"]

        shipped_as = f"the teacher whose weights ship with {path.name} ({recipe.teacher.shipped.path})"
        if teacher_keys(split_over):
            raise ConfigError(f"--set {teacher_keys(split_over)[0]} changes {shipped_as}, which would be used unchanged",
                              hint="add --set teacher.retrain=true to train the teacher with your settings, "
                                   "or drop the override to use the shipped weights")
        if teacher_keys(q):
            raise ConfigError(f"{path.name}: its quick block sets {teacher_keys(q)[0]}, a setting of {shipped_as}",
                              hint="add `teacher.retrain: true` to the quick block (a quick build then trains its "
                                   "own teacher), or drop the setting")
    # shipped teacher weights lie beside the card (models/weights/ in the source tree and the wheel)
    for t in (recipe.teacher, *recipe.distill.extra_teachers, *(task.teacher for task in recipe.distill.tasks)):
        t._card_dir = path.resolve().parent
    return recipe


def load_target(ref: str, overrides: dict[str, Any] | None = None, quick: bool = False) -> TargetConfig:
    """Load a target by name or path; --set target.a.b=v overrides its keys; --quick shortens profiling
    (its [profile.quick] table, then the user's overrides again: they win, as for recipes)."""
    path = _resolve(ref, "targets")
    raw = read_raw(path)
    t_over = {k[len("target."):]: v for k, v in (overrides or {}).items() if k.startswith("target.")}
    raw = apply_overrides(raw, t_over, TargetConfig)
    target = validate(TargetConfig, raw, str(path))
    if quick:
        prof = {**target.profile.model_dump(), **target.profile.quick}
        raw.setdefault("profile", {}).update(prof)
        raw["profile"].pop("quick", None)
        # then the user's --set again, as for recipes: `--quick --set target.profile.min_runs=10` means 10
        again = {k: v for k, v in t_over.items() if not k.startswith("profile.quick")}
        target = validate(TargetConfig, apply_overrides(raw, again, TargetConfig), str(path))
    return target


# --------------------------------------------------------------------------- edgekd init

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# Conventions a given image teacher may have been trained on, tried by `edgekd init` on a sample
# of the data: the one under which the teacher is most accurate is written into the card.
NORMALIZATIONS: dict[str, tuple[list[float], list[float]] | None] = {
    "pixels scaled to [0, 1] (torchvision ToTensor)": None,
    "ImageNet mean/std": IMAGENET,
    "pixels scaled to [-1, 1]": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
}


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


def data_spec(path: str, label_column: str | None = None, text_column: str | None = None) -> dict[str, Any]:
    """A data section from a path: image folder, .csv, .jsonl, .npz, or a save_to_disk folder."""
    p = Path(path).expanduser()
    d: dict[str, Any] = {"path": path}
    if p.is_file():
        kinds = {".csv": "csv", ".jsonl": "jsonl", ".npz": "npz"}
        if p.suffix not in kinds:
            raise ConfigError(f"cannot tell the data format of {p.name}", hint="give .csv, .jsonl, .npz or a folder")
        d["kind"] = kinds[p.suffix]
    elif p.is_dir():
        if any((p / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")):
            d["kind"] = "hf-disk"
        elif (p / "train.csv").is_file():
            d["kind"] = "csv"
        elif (p / "train.jsonl").is_file():
            d["kind"] = "jsonl"
        elif (p / "train.npz").is_file():
            d["kind"] = "npz"
        else:
            d["kind"] = "image-folder"
    else:
        raise ConfigError(f"data {path} does not exist", hint="give an image folder, a .csv/.jsonl/.npz file or a folder of them")
    if label_column:
        d["label_column"] = label_column
    if text_column:
        d["text_column"] = text_column
    return d


def _columns_of(d: dict[str, Any]) -> dict[str, Any]:
    """For csv/jsonl: text column (if any) or the numeric feature columns, besides the label."""
    from edgekd.data import table

    p = Path(d["path"]).expanduser()
    f = p if p.is_file() else p / f"train.{d['kind']}"
    rec = table.READERS[d["kind"]][0](f)
    label = d.get("label_column", "label")
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
    import json

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


def init_card(teacher: str, data: str, weights: str | None = None, student: str | None = None,
              student_weights: str | None = None, name: str | None = None, label_column: str | None = None,
              text_column: str | None = None, log=None, teacher_kwargs: dict[str, Any] | None = None,
              student_kwargs: dict[str, Any] | None = None) -> str:
    """Inspect a teacher and a dataset and return a complete, commented recipe card (YAML text)
    that `edgekd build` takes unchanged. The card is validated before it is returned.
    `teacher_kwargs`/`student_kwargs` are passed to the models' builders (e.g. num_classes)."""
    import json

    import numpy as np

    from edgekd.config import DataConfig, ModelRef
    from edgekd.data import load
    from edgekd.zoo.sources import build_model, check_model_on_data, hf_task, wanted_input

    say = log or (lambda _m: None)
    t = model_spec(teacher, weights)
    for what, kw in (("--teacher-kwargs", teacher_kwargs), ("--student-kwargs", student_kwargs)):
        if kw is not None and not isinstance(kw, dict):
            raise ConfigError(f"{what} must be a mapping, got {type(kw).__name__}", hint=f"e.g. {what} '{{num_classes: 10}}'")
    if teacher_kwargs:
        if "onnx" in t:
            raise ConfigError("an onnx teacher takes no kwargs (they are in the file)", hint="drop --teacher-kwargs")
        t["kwargs"] = dict(teacher_kwargs)
    d = data_spec(data, label_column, text_column)
    notes: dict[str, str] = {}
    hf_encoder_only = False
    if "hf" in t:
        try:
            hf_task(t["hf"])
        except ConfigError:
            hf_encoder_only = True  # an encoder without a head (e.g. MiniLM): fine-tuned as hf_text_classifier
    if d["kind"] in ("csv", "jsonl"):
        d |= _columns_of(d)
    if d["kind"] in ("csv", "jsonl", "hf-disk") and not d.get("feature_columns"):
        if "hf" in t:
            d["tokenizer"] = t["hf"]
            notes["tokenizer"] = "the teacher's own tokenizer"
        else:
            raise UserError("text data needs the teacher's tokenizer, and this teacher is not a Hugging Face folder",
                            hint="add data.tokenizer (a tokenizer folder or pkg:NAME) to the card by hand")
    if d["kind"] == "image-folder":
        hf_pre = _hf_preprocessing(t["hf"]) if "hf" in t else {}
        if hf_pre:
            d |= hf_pre
            notes["normalization"] = "from the model's preprocessor_config.json"
        sizes = _image_sizes(data)
        if "image_size" not in d and len(sizes) > 1:
            common = max(sizes, key=lambda k: sizes[k])
            d["image_size"] = list(common)
            notes["image_size"] = f"images come in {len(sizes)} sizes; all resized to the most common one"
    # the teacher decides the channels and the input size when its first layer says so
    # an encoder without a head is built once the number of classes is known
    tref = {"arch": "hf_text_classifier", "kwargs": {"hf": t["hf"], "num_classes": 2}} if hf_encoder_only else t
    model = build_model(ModelRef(**tref), log=say) if not hf_encoder_only else None
    if model is not None and d["kind"] == "image-folder":
        want = wanted_input(model) or ""
        import re

        m = re.match(r"\[N, (\d+), (\w+), (\w+)\]", want)
        if m and "channels" not in d:
            d["channels"] = int(m.group(1))
        if m and m.group(2).isdigit() and m.group(3).isdigit():
            d["image_size"] = [int(m.group(2)), int(m.group(3))]
            notes["image_size"] = "the ONNX teacher's fixed input size"
    splits = load(DataConfig(**d))
    n_cls = splits.num_classes
    if hf_encoder_only:
        tref["kwargs"]["num_classes"] = n_cls
        model = build_model(ModelRef(**tref), log=say)
    x_sample = splits.x_train[: min(256, len(splits.x_train))]
    y_sample = splits.y_train[: len(x_sample)]
    keep = y_sample >= 0
    x_sample, y_sample = x_sample[keep], y_sample[keep]
    check_model_on_data(model, x_sample, n_cls, "teacher", teacher)
    if splits.x_train.ndim == 4:
        task = "image-classification"
    elif np.issubdtype(splits.x_train.dtype, np.integer):
        task = "text-classification"
    else:
        task = "tabular-classification"
    given = bool(t.get("weights") or t.get("onnx") or ("hf" in t and not hf_encoder_only))
    acc_note = ""
    if task == "image-classification" and given and "normalization" not in notes:
        c = splits.x_train.shape[1]
        scores = {}
        for label, ms in NORMALIZATIONS.items():
            if ms is None:
                xs = x_sample
            else:
                mean = np.asarray(ms[0][:c], np.float32).reshape(1, -1, 1, 1)
                std = np.asarray(ms[1][:c], np.float32).reshape(1, -1, 1, 1)
                xs = ((x_sample - mean) / std).astype(np.float32)
            scores[label] = _accuracy(model, xs, y_sample)
        best = max(scores, key=lambda k: scores[k])
        if NORMALIZATIONS[best] is not None:
            d["mean"], d["std"] = [round(v, 4) for v in NORMALIZATIONS[best][0][:c]], [round(v, 4) for v in NORMALIZATIONS[best][1][:c]]
        notes["normalization"] = (f"{best}: the teacher scored " + ", ".join(f"{v:.1%} with {k.split(' (')[0]}" for k, v in scores.items())
                                  + f" on {len(x_sample)} training images")
    elif given:
        acc_note = f"{_accuracy(model, x_sample, y_sample):.1%} on {len(x_sample)} training samples"
    # the student: the user's, or a small zoo model that fits the data
    if student:
        s = model_spec(student, student_weights)
        if student_kwargs:
            s["kwargs"] = dict(student_kwargs)
        s_note = "your student"
    elif task == "image-classification":
        s = {"arch": "small_cnn", "kwargs": {"in_channels": int(splits.x_train.shape[1]), "num_classes": n_cls}}
        s_note = "a small zoo CNN; name your own with --student package.module:function"
    elif task == "tabular-classification":
        s = {"arch": "mlp", "kwargs": {"in_features": int(np.prod(splits.x_train.shape[1:])), "num_classes": n_cls, "hidden": [64]}}
        s_note = "a small zoo MLP; name your own with --student package.module:function"
    else:
        hf_src = t.get("hf")
        if not hf_src:
            raise UserError("a text teacher that is not a Hugging Face folder needs --student", hint="--student package.module:function")
        s = {"arch": "bert_student", "kwargs": {"hf": hf_src, "num_classes": n_cls, "num_layers": 2,
                                                 "init_from": "trained_teacher" if hf_encoder_only else "teacher"}}
        s_note = "a 2-layer BERT " + ("cut out of the fine-tuned teacher" if hf_encoder_only else "started from the teacher's pretrained layers")
    if student_kwargs and not student:
        s["kwargs"] = {**s.get("kwargs", {}), **student_kwargs}
    student_model = build_model(ModelRef(**s), log=say)
    check_model_on_data(student_model, x_sample, n_cls, "student", student or s.get("arch", ""))
    name = name or f"{Path(data.rstrip('/')).stem or 'my'}-byo".replace(" ", "-")
    teacher_train = None
    if not given:
        teacher_train = ({"epochs": 2, "batch_size": 32, "lr": 5e-5, "weight_decay": 0.01, "seed": 0} if hf_encoder_only
                         else {"epochs": 10, "batch_size": 64, "lr": 0.003, "seed": 0})
    onnx_teacher = "onnx" in t
    s_src = next(s[k] for k in MODEL_SOURCES if k in s)
    description = f"{task}: {teacher} -> {s_src} on {data}"
    y = lambda v: json.dumps(v)  # noqa: E731 — JSON is valid YAML and quotes what needs quoting
    lines = [
        f"# Recipe card written by `edgekd init` for {teacher} on {data}.",
        "# Edit and commit it: it is the reproducible record of this build (the build copies it into its folder).",
        "# Paths are relative to the folder you run `edgekd build` from.",
        "schema_version: 1",
        f"name: {y(name)}",
        f"description: {y(description)}",
        f"task: {task}",
        "data:",
        f"  kind: {d['kind']}",
        f"  path: {y(d['path'])}",
        f"  # {n_cls} classes, in the teacher's output order: check them (they default to sorted names)",
        f"  classes: {y(splits.class_names)}",
    ]
    if task == "image-classification":
        lines.append(f"  channels: {splits.x_train.shape[1]}")
        if d.get("image_size"):
            lines.append(f"  image_size: {y(d['image_size'])}  # [height, width]" + (f"; {notes['image_size']}" if "image_size" in notes else ""))
        if d.get("mean"):
            lines += [f"  # normalization: {notes.get('normalization', '')}", f"  mean: {y(d['mean'])}", f"  std: {y(d['std'])}"]
        else:
            lines.append(f"  # normalization: {notes.get('normalization', 'pixels scaled to [0, 1]')} (no mean/std: [0, 1])")
    for k in ("label_column", "text_column", "feature_columns", "tokenizer"):
        if d.get(k):
            lines.append(f"  {k}: {y(d[k])}" + (f"  # {notes[k]}" if k in notes else ""))
    if d["kind"] in ("csv", "jsonl") and "label_column" not in d:
        lines.append('  label_column: "label"')
    if task == "text-classification":
        lines.append("  max_length: 64  # tokens per sample")
    lines += ["  val_fraction: 0.1", "  test_fraction: 0.2  # held out when the data has no test split",
              "  seed: 0", "  # unlabeled: PATH  # a transfer set without labels: the student learns the teacher's soft labels on it",
              "teacher:"]
    for k in (*MODEL_SOURCES, "weights"):
        if k in tref:
            lines.append(f"  {k}: {y(tref[k])}")
    if tref.get("kwargs"):
        lines.append(f"  kwargs: {y(tref['kwargs'])}")
    if teacher_train:
        lines.append("  # trained first: it has no weights yet" if not hf_encoder_only else
                     "  # a pretrained encoder with a fresh head: fine-tuned first")
        lines.append(f"  train: {y(teacher_train)}")
    else:
        lines.append("  # no `train`: the teacher is used as given" + (f" ({acc_note})" if acc_note else "")
                     + "; its accuracy is measured and reported")
    lines += [f"student:  # {s_note}"]
    for k in (*MODEL_SOURCES, "weights"):
        if k in s:
            lines.append(f"  {k}: {y(s[k])}")
    if s.get("kwargs"):
        lines.append(f"  kwargs: {y(s['kwargs'])}")
    lines += ["distill:", "  epochs: 10", "  batch_size: 64", "  lr: 0.003" if task != "text-classification" else "  lr: 0.0001",
              "  seed: 0"]
    if onnx_teacher:
        lines += ["  # an ONNX teacher gives logits only: onnxruntime writes them once into the teacher-logit cache",
                  "  teacher_cache: {enabled: true}", "  augment: false"]
    else:
        # The losses below read the teacher's logits only: one teacher pass fills the cache and the epochs never
        # run the teacher (bench_byo: a ResNet-18 teacher cost 377 s per epoch online, 230 s cached, on a loaded
        # host). Turn it off for feature/attention/hidden_state/relation losses, which need the teacher online.
        lines += ["  teacher_cache: {enabled: true}  # the teacher's logits, computed once", "  augment: false"]
    lines += ["  losses:  # soft labels from the teacher + the true labels",
              "    - {kind: soft_label, weight: 0.9, temperature: 4.0}",
              "    - {kind: hard_label, weight: 0.1}",
              "quantize:",
              "  accuracy_budget: 1.0  # points of accuracy a quantized student may lose vs its FP32 version",
              "  calibration_samples: 128",
              "quick:  # --quick (smoke test): fewer epochs",
              "  distill.epochs: 2"]
    if teacher_train:
        lines.append("  teacher.train.epochs: 1")
    text = "\n".join(lines) + "\n"
    import yaml

    validate(RecipeConfig, yaml.safe_load(text), "edgekd init output")  # never hand out a card that does not load
    return text
