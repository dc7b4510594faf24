"""Quantization candidates made from the FP32 student ONNX, plus accuracy checks.

On a CPU without VNNI INT8 is only sometimes faster (ENVIRONMENT.md), so edgekd does not pick one
scheme: it makes every candidate the recipe names, the profiler times each, and `select` keeps the
best that fits the accuracy budget. Each maker is registered by name in `CANDIDATES` by the
`@candidate` decorator below; the pipeline calls `make_candidate(name, ...)`.

onnx, onnxruntime and nncf are imported inside functions (house rule: `import edgekd` stays light).
"""
from __future__ import annotations

import contextlib
import difflib
import io
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt

from edgekd.errors import ConfigError, DataError, StageError
from edgekd.config import SensitivityMethod
from edgekd.quantize import sensitivity
from edgekd.quantize.budget import Budget
from edgekd.runtimes.ort import input_spec, run_onnx, session

log = logging.getLogger(__name__)


class NotApplicable(StageError):
    """The candidate does not apply to this graph (e.g. weight-only on a graph with no MatMul).

    The message starts with "not applicable:" so the caller can record `failed: not applicable ...`.
    """


@dataclass(frozen=True)
class CalibSet:
    """Calibration batches for the model's first input (already validated and cast)."""

    input_name: str
    batches: list[np.ndarray]

    def reader(self):
        """A fresh onnxruntime CalibrationDataReader over the batches (ORT consumes it once)."""
        from onnxruntime.quantization import CalibrationDataReader

        name, batches = self.input_name, self.batches

        class _Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it: Iterator[np.ndarray] = iter(batches)

            def get_next(self) -> dict[str, np.ndarray] | None:
                b = next(self._it, None)
                return None if b is None else {name: b}

            def rewind(self) -> None:
                self._it = iter(batches)

        return _Reader()

    @property
    def n_samples(self) -> int:
        return sum(len(b) for b in self.batches)


# A maker turns `src` into `dst` and returns the effective settings; `notes` collects remarks
# (fallbacks taken, layers skipped) for the stage result.
Maker = Callable[[Path, Path, "CalibSet | None", dict[str, Any], list[str]], dict[str, Any]]


@dataclass(frozen=True)
class CandidateSpec:
    name: str
    make: Maker
    kind: str  # reference | fp16 | dynamic | static | weight-only
    needs_calibration: bool
    supports_exclusion: bool  # can leave named nodes in FP32 (accuracy-aware loop)
    description: str
    options: tuple[str, ...] = field(default=())  # free option keys this maker reads
    # bumped when the maker writes a different graph for the same settings: part of the stage keys that make
    # candidates (maker_revisions), so a build folder made before quantizes again instead of reusing the old graph
    revision: int = 1


CANDIDATES: dict[str, CandidateSpec] = {}


def candidate(name: str, *, kind: str, needs_calibration: bool = False, supports_exclusion: bool = False,
              description: str = "", options: tuple[str, ...] = (), revision: int = 1) -> Callable[[Maker], Maker]:
    """Register a candidate maker under `name`."""

    def deco(fn: Maker) -> Maker:
        if name in CANDIDATES:
            raise ValueError(f"candidate {name!r} registered twice")
        CANDIDATES[name] = CandidateSpec(name, fn, kind, needs_calibration, supports_exclusion, description, options,
                                         revision)
        return fn

    return deco


def maker_revisions() -> dict[str, int]:
    """{name: revision} of the makers past their first graph format (a stage key's part: CandidateSpec.revision)."""
    return {n: s.revision for n, s in sorted(CANDIDATES.items()) if s.revision > 1}


def makers_key() -> dict[str, Any]:
    """What every stage that makes candidates (quantize, the quantized teacher, the searches) adds to its key beyond
    the card: the host property INT8 graphs depend on (host_u8s8_reduce_range: a build moved to another kind of host
    quantizes again) and the makers' revisions (a build made before a maker changed its graph quantizes again)."""
    return {"u8s8_reduce_range": host_u8s8_reduce_range()[0], "makers": maker_revisions()}


# --------------------------------------------------------------------------- validation

# Candidates made outside this registry, and the kind of ONNX graph they produce.
# int8-qat (edgekd/quantize/qat.py) fine-tunes the torch student and exports a static QDQ graph.
OTHER_KINDS: dict[str, str] = {"int8-qat": "static"}


# A language model's candidate with its output head trimmed to the tokens seen in training (edgekd/llm/vocab.py):
# `int8-dynamic-vocab` is int8-dynamic made from the trimmed FP32 student. The same kind of graph as its base.
TRIMMED_HEAD = "-vocab"


def base_candidate(name: str) -> tuple[str, bool]:
    """('int8-dynamic', True) for 'int8-dynamic-vocab'; (name, False) for any other name."""
    return (name[: -len(TRIMMED_HEAD)], True) if name.endswith(TRIMMED_HEAD) else (name, False)


def candidate_kind(name: str) -> str:
    """The kind of graph candidate `name` produces (reference | fp16 | dynamic | static |
    weight-only): what a target family decides by. ConfigError for an unknown name."""
    if name in OTHER_KINDS:
        return OTHER_KINDS[name]
    name = base_candidate(name)[0]
    validate_candidate_names([name])
    return CANDIDATES[name].kind



def validate_candidate_names(names: list[str] | tuple[str, ...]) -> None:
    """Raise ConfigError (exit 2) naming the first unknown candidate, with a near match."""
    valid = list(CANDIDATES)
    for n in names:
        if n not in CANDIDATES:
            close = difflib.get_close_matches(str(n), valid, n=1, cutoff=0.5)
            hint = (f"did you mean '{close[0]}'? " if close else "") + f"valid candidates: {', '.join(valid)}"
            raise ConfigError(f"unknown quantization candidate '{n}'", hint=hint)


class QuantizeOptions(BaseModel):
    """`quantize.options`: typed per-kind extras, so `group_size: abc` or a typo exits 2 before any
    training instead of becoming a failed candidate (or being silently ignored)."""

    model_config = ConfigDict(extra="forbid")

    # every candidate / the quantize stage
    calibration_samples: PositiveInt | None = None
    calibration_batch_size: PositiveInt | None = None
    calibration_method: Literal["minmax", "entropy", "percentile"] | None = None
    per_channel: bool | None = None
    reduce_range: bool | None = None
    nodes_to_exclude: list[str] | None = None
    # accuracy-aware FP32 fallback
    max_exclusion_steps: NonNegativeInt | None = None
    sensitivity_method: SensitivityMethod | None = None
    sensitivity_samples: PositiveInt | None = None
    max_sensitivity_nodes: PositiveInt | None = None
    # int8-qat
    qat_epochs: PositiveInt | None = None
    qat_lr_scale: PositiveFloat | None = None
    # fp16
    fp16_op_block_list: list[str] | None = None
    # onnxruntime static / dynamic
    op_types_to_quantize: list[str] | None = None
    extra_options: dict[str, Any] | None = None
    # NNCF
    preset: Literal["performance", "mixed"] | None = None
    subset_size: PositiveInt | None = None
    ignored_scope: dict[str, list[str]] | list[str] | None = None
    model_type: Literal["transformer"] | None = None
    fast_bias_correction: bool | None = None
    group_size: int | None = Field(None, ge=-1)
    ratio: float | None = Field(None, gt=0, le=1)
    all_layers: bool | None = None
    group_size_fallback: Literal["error", "ignore", "adjust"] | None = None
    # int8-weight / int4-weight on onnxruntime: MatMulNBits' compute (4: INT8 activations per block; 0: FP32)
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = None


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """Validate `quantize.options`; return the options as given, with values coerced to their types.
    An unknown key or a wrong value is a ConfigError (exit 2) naming it."""
    from pydantic import ValidationError

    try:
        parsed = QuantizeOptions.model_validate(options)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        known = sorted(QuantizeOptions.model_fields)
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = (f"did you mean '{close[0]}'? " if close else "") + f"valid keys: {', '.join(known)}"
            raise ConfigError(f"unknown quantize option '{key}'", hint=hint) from None
        raise ConfigError(f"quantize.options.{key}: {err['msg']} (got {err.get('input')!r})",
                          hint="fix the recipe's quantize.options or the --set value") from None
    return parsed.model_dump(exclude_unset=True)


def _fmt_shape(dims: list[int | None]) -> str:
    return "[" + ", ".join("batch" if (i == 0 and d is None) else ("?" if d is None else str(d))
                           for i, d in enumerate(dims)) + "]"


def calibration_set(model_path: Path, calib: np.ndarray | None, options: dict[str, Any],
                    default_batch: int = 16) -> CalibSet:
    """Validate `calib` against the model's first input and cut it into batches.

    Empty or wrongly shaped data is a DataError (exit 2) that states the expected shape.
    """
    spec = input_spec(model_path)
    expected = _fmt_shape(spec.dims)
    if calib is None or not isinstance(calib, np.ndarray) or calib.size == 0 or calib.ndim == 0 or len(calib) == 0:
        raise DataError(f"empty calibration set for input '{spec.name}' (expected shape {expected})",
                        hint="pass real samples from the training/validation split (quantize.calibration_samples)")
    if calib.ndim != len(spec.dims) or any(d is not None and d != s for d, s in zip(spec.dims[1:], calib.shape[1:])):
        raise DataError(f"calibration data has shape {list(calib.shape)}, model input '{spec.name}' expects {expected}",
                        hint="calibration samples must be preprocessed exactly like the model's inputs")
    n = int(options.get("calibration_samples") or len(calib))
    data = np.ascontiguousarray(calib[:n]).astype(spec.dtype, copy=False)
    static_batch = spec.dims[0] if spec.dims else None
    bs = static_batch or int(options.get("calibration_batch_size") or default_batch)
    if bs < 1:
        raise ConfigError(f"calibration_batch_size must be >= 1, got {bs}", hint="use e.g. 16")
    if len(data) < bs:
        raise DataError(f"{len(data)} calibration samples, the model's static batch needs at least {bs}",
                        hint="give more calibration samples or export with a dynamic batch axis")
    # A static batch dim takes only full batches; a dynamic one takes the remainder too.
    stop = len(data) - (len(data) % bs if static_batch else 0)
    return CalibSet(spec.name, [data[i:i + bs] for i in range(0, stop, bs)])


# --------------------------------------------------------------------------- helpers


def _param_count(model) -> int:
    from onnx import numpy_helper

    return int(sum(int(np.prod(numpy_helper.to_array(t).shape)) if t.dims else 1 for t in model.graph.initializer))


def _matmul_weights(model) -> list[str]:
    """MatMul/Gemm nodes whose weight (second input) is a constant 2-D initializer."""
    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    out = []
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1:
            w = n.input[1]
            if (w in inits and len(inits[w].dims) == 2) or w in consts:
                out.append(n.name or n.output[0])
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence ORT's calibration prints and NNCF's INFO tables (progress goes to stage logs, not stdout)."""
    # ORT's symbolic shape inference and per-channel quantizer log expected warnings on BERT-like
    # graphs (symbolic broadcasts, 1-D LayerNorm weights) through the root logger: keep them out of
    # the terminal; real failures still raise.
    levels = {"nncf": logging.WARNING, "": logging.ERROR, "onnxruntime": logging.ERROR,
              "onnxruntime.tools.symbolic_shape_infer": logging.ERROR}
    saved = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _in_dir(path: Path) -> Iterator[None]:
    """Run with `path` as the working directory: when symbolic shape inference fails, ORT dumps
    sym_shape_infer_temp.onnx and a multi-MB external-data file into the CWD — the user's folder."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


_CALIB_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "distribution": "Distribution"}


def _calib_method(options: dict[str, Any]):
    from onnxruntime.quantization import CalibrationMethod

    key = str(options.get("calibration_method", "minmax")).lower()
    if key not in _CALIB_METHODS:
        raise ConfigError(f"unknown calibration_method '{key}'", hint=f"valid: {', '.join(_CALIB_METHODS)}")
    return getattr(CalibrationMethod, _CALIB_METHODS[key])


def _preprocess(src: Path, dst: Path, notes: list[str]) -> Path:
    """ORT's quant_pre_process (shape inference + graph optimisation); on failure retry without
    symbolic shape inference (BERT-like graphs), then fall back to the raw model, noting why."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src).resolve(), Path(dst).resolve()
    try:
        # auto_merge resolves symbolic broadcasts such as Min(512, sequence) vs sequence (BERT).
        with _quiet(), _in_dir(dst.parent):
            quant_pre_process(str(src), str(dst), auto_merge=True)
        return dst
    except Exception as e:  # noqa: BLE001 - any failure here has a fallback, recorded below
        first = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    try:
        with _quiet(), _in_dir(dst.parent):
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        notes.append(f"quant_pre_process needed skip_symbolic_shape=True ({first})")
        return dst
    except Exception as e:  # noqa: BLE001 - fall back to the unprocessed model, recorded below
        notes.append(f"quant_pre_process skipped ({first}; retry: {type(e).__name__}: {e})")
        return src


# --------------------------------------------------------------------------- makers


@candidate("fp32", kind="reference", description="the FP32 student as exported (reference)")
def _make_fp32(src: Path, dst: Path, calib: CalibSet | None, options: dict[str, Any], notes: list[str]) -> dict:
    shutil.copyfile(src, dst)
    return {}


@candidate("fp16", kind="fp16", description="FP16 weights and compute, FP32 inputs/outputs",
           options=("fp16_op_block_list",))
def _make_fp16(src: Path, dst: Path, calib: CalibSet | None, options: dict[str, Any], notes: list[str]) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    block = options.get("fp16_op_block_list")
    from edgekd.onnxgraph import topological_sort

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=block)
    topological_sort(model)  # the converter appends the input Casts last: invalid for onnx's checker
    onnx.save(model, str(dst))
    notes.append("on CPUs without native FP16 ORT upcasts many kernels: expect a size win, not a speed win")
    return {"keep_io_types": True, "op_block_list": block}


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def host_u8s8_reduce_range() -> tuple[bool, str]:
    """Whether U8S8 INT8 (uint8 activations x int8 weights: dynamic INT8 and the default static QDQ) should quantize
    weights to 7 bits on this host, and why. onnxruntime's x86 U8S8 kernels on AVX2 / AVX-512 without VNNI sum
    pairs of u8*s8 products in saturating int16 (vpmaddubsw); 7-bit weights cannot overflow it (onnxruntime's
    quantization guide: reduce_range for U8S8 on non-VNNI machines). Measured on an AVX2-only AMD EPYC host: the
    SmolLM2 student's dynamic INT8 fell to 0.0% next-token agreement (perplexity 2e5) with 8-bit weights and kept
    25.8% with 7-bit (fp32: 32.2%). With VNNI (or off x86) there is no saturation: full 8-bit weights."""
    from edgekd.hostinfo import cpu_info

    info = cpu_info()
    if str(info.get("arch", "")).lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False, f"{info.get('arch')}: no x86 U8S8 saturation"
    flags = info.get("flags") or {}
    vnni = [f for f in VNNI_FLAGS if flags.get(f)]
    if vnni:
        return False, f"this host's CPU has {'/'.join(vnni)}: no U8S8 saturation, 8-bit weights"
    return True, ("this host's CPU has no VNNI (avx512_vnni/avx_vnni/amx_int8): U8S8 int16 accumulation saturates, "
                  "so weights are quantized to 7 bits (reduce_range)")


def _reduce_range(options: dict[str, Any], notes: list[str]) -> bool:
    """options['reduce_range'] when set; else this host's answer (host_u8s8_reduce_range), said in the notes."""
    if options.get("reduce_range") is not None:
        return bool(options["reduce_range"])
    rr, why = host_u8s8_reduce_range()
    if rr:
        notes.append(f"reduce_range: {why}")
    return rr


@candidate("int8-dynamic", kind="dynamic", supports_exclusion=True,
           description="dynamic INT8: INT8 weights, activations quantized at run time",
           options=("op_types_to_quantize", "extra_options"))
def _make_dynamic(src: Path, dst: Path, calib: CalibSet | None, options: dict[str, Any], notes: list[str]) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = {"weight_type": "QInt8", "per_channel": bool(options.get("per_channel", True)),
                "reduce_range": _reduce_range(options, notes),
                "op_types_to_quantize": options.get("op_types_to_quantize"),
                "nodes_to_exclude": list(options.get("nodes_to_exclude") or [])}
    # Dynamic mode rewrites each Gemm into MatMul "<name>_MatMul" + Add before it checks the
    # exclusion list, so a Gemm's own name would silently match nothing: exclude both names.
    excluded = [m for n in settings["nodes_to_exclude"] for m in (n, f"{n}_MatMul")]
    with tempfile.TemporaryDirectory(dir=dst.parent) as td:
        pre = _preprocess(src, Path(td) / "pre.onnx", notes)
        with _quiet():
            quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=settings["per_channel"],
                             reduce_range=settings["reduce_range"],
                             op_types_to_quantize=settings["op_types_to_quantize"],
                             nodes_to_exclude=excluded, extra_options=options.get("extra_options"))
    return settings


def _static(src: Path, dst: Path, calib: CalibSet | None, options: dict[str, Any], notes: list[str],
            activation: str, weight: str, reduce_range: bool) -> dict:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if calib is None:  # make_candidate builds it for every needs_calibration maker
        raise StageError("static quantization called without calibration data", hint="internal error")
    method = _calib_method(options)
    settings = {"format": "QDQ", "activation_type": activation, "weight_type": weight,
                "per_channel": bool(options.get("per_channel", True)), "reduce_range": reduce_range,
                "calibration_method": method.name, "calibration_samples": calib.n_samples,
                "op_types_to_quantize": options.get("op_types_to_quantize"),
                "nodes_to_exclude": list(options.get("nodes_to_exclude") or [])}
    with tempfile.TemporaryDirectory(dir=dst.parent) as td:
        pre = _preprocess(src, Path(td) / "pre.onnx", notes)
        settings["preprocessed"] = pre != src
        with _quiet():
            quantize_static(str(pre), str(dst), calib.reader(), quant_format=QuantFormat.QDQ,
                            per_channel=settings["per_channel"], reduce_range=reduce_range,
                            activation_type=getattr(QuantType, activation), weight_type=getattr(QuantType, weight),
                            op_types_to_quantize=settings["op_types_to_quantize"],
                            nodes_to_exclude=settings["nodes_to_exclude"], calibrate_method=method,
                            extra_options=options.get("extra_options"))
    return settings


_STATIC_OPTS = ("op_types_to_quantize", "extra_options")


@candidate("int8-qdq", kind="static", needs_calibration=True, supports_exclusion=True, options=_STATIC_OPTS,
           description="static INT8 QDQ, U8 activations / S8 weights (ORT default)")
def _make_qdq(src: Path, dst: Path, calib: CalibSet | None, options: dict[str, Any], notes: list[str]) -> dict:
    return _static(src, dst, calib, options, notes, "QUInt8", "QInt8", _reduce_range(options, notes))


@candidate("int8-qdq-u8u8", kind="static", needs_calibration=True, supports_exclusion=True, options=_STATIC_OPTS,
           description="static INT8 QDQ, U8 activations / U8 weights (avoids U8S8 saturation without VNNI)")
def _make_qdq_u8u8(src: Path, dst: Path, calib: CalibSet | None, options: dict[str, Any], notes: list[str]) -> dict:
    return _static(src, dst, calib, options, notes, "QUInt8", "QUInt8", bool(options.get("reduce_range", False)))


@candidate("int8-qdq-s8s8", kind="static", needs_calibration=True, supports_exclusion=True, options=_STATIC_OPTS,
           description="static INT8 QDQ, S8 activations / S8 weights")
def _make_qdq_s8s8(src: Path, dst: Path, calib: CalibSet | None, options: dict[str, Any], notes: list[str]) -> dict:
    return _static(src, dst, calib, options, notes, "QInt8", "QInt8", bool(options.get("reduce_range", False)))


@candidate("int8-qdq-reduce-range", kind="static", needs_calibration=True, supports_exclusion=True,
           options=_STATIC_OPTS, description="static INT8 QDQ U8S8 with 7-bit weights (no saturation without VNNI)")
def _make_qdq_rr(src: Path, dst: Path, calib: CalibSet | None, options: dict[str, Any], notes: list[str]) -> dict:
    return _static(src, dst, calib, options, notes, "QUInt8", "QInt8", True)


def _ignored_scope(options: dict[str, Any]):
    """NNCF IgnoredScope from `ignored_scope` ({names, patterns, types} or a list of names)
    merged with the accuracy loop's `nodes_to_exclude`."""
    from nncf import IgnoredScope

    raw = options.get("ignored_scope") or {}
    if isinstance(raw, (list, tuple)):
        raw = {"names": list(raw)}
    if not isinstance(raw, dict) or set(raw) - {"names", "patterns", "types", "validate"}:
        raise ConfigError(f"ignored_scope must be a list of node names or a mapping of names/patterns/types, "
                          f"got {raw!r}",
                          hint="e.g. ignored_scope: {types: [Softmax], names: ['/fc/Gemm']}")
    names = list(raw.get("names") or []) + list(options.get("nodes_to_exclude") or [])
    if not (names or raw.get("patterns") or raw.get("types")):
        return None, {}
    scope = {"names": names, "patterns": list(raw.get("patterns") or []), "types": list(raw.get("types") or [])}
    return IgnoredScope(**scope, validate=bool(raw.get("validate", True))), scope


@candidate("int8-nncf", kind="static", needs_calibration=True, supports_exclusion=True,
           options=("preset", "subset_size", "ignored_scope", "model_type", "fast_bias_correction"),
           description="static INT8 by NNCF post-training quantization on the ONNX model")
def _make_nncf(src: Path, dst: Path, calib: CalibSet | None, options: dict[str, Any], notes: list[str]) -> dict:
    import nncf
    import onnx

    if calib is None:
        raise StageError("int8-nncf called without calibration data", hint="internal error")
    preset_name = str(options.get("preset", "performance")).lower()
    if preset_name not in ("performance", "mixed"):
        raise ConfigError(f"unknown NNCF preset '{preset_name}'", hint="valid: performance, mixed")
    model_type = options.get("model_type")
    if model_type not in (None, "transformer"):
        raise ConfigError(f"unknown NNCF model_type '{model_type}'", hint="valid: transformer (or leave it out)")
    scope, scope_dict = _ignored_scope(options)
    subset = int(options.get("subset_size") or calib.n_samples)
    dataset = nncf.Dataset([{calib.input_name: b} for b in calib.batches])
    with _quiet():
        q = nncf.quantize(onnx.load(str(src)), dataset, preset=nncf.QuantizationPreset(preset_name),
                          subset_size=subset, ignored_scope=scope,
                          fast_bias_correction=bool(options.get("fast_bias_correction", True)),
                          model_type=nncf.ModelType.TRANSFORMER if model_type else None)
    onnx.save(q, str(dst))
    return {"preset": preset_name, "subset_size": subset, "ignored_scope": scope_dict, "model_type": model_type,
            "calibration_samples": calib.n_samples, "nodes_to_exclude": list(options.get("nodes_to_exclude") or [])}


def _fold_constant_transposes(model) -> list[str]:
    """Replace Transpose(initializer) nodes whose output feeds MatMul/Gemm by a transposed initializer."""
    import numpy as np
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, set[str]] = {}
    for n in model.graph.node:
        for x in n.input:
            consumers.setdefault(x, set()).add(n.op_type)
    folded = []
    for n in list(model.graph.node):
        if n.op_type != "Transpose" or len(n.input) != 1 or n.input[0] not in inits:
            continue
        if not consumers.get(n.output[0]) or not consumers[n.output[0]] <= {"MatMul", "Gemm"}:
            continue
        w = numpy_helper.to_array(inits[n.input[0]])
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(np.transpose(w, perm)), n.output[0]))
        model.graph.node.remove(n)
        folded.append(n.name or n.output[0])
    return folded


def _weight_only(src: Path, dst: Path, options: dict[str, Any], notes: list[str], int4: bool) -> dict:
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    from edgekd.onnxgraph import ensure_domain_imports
    from edgekd.quantize.nbits import lower as lower_weight_only

    model = onnx.load(str(src))
    folded = _fold_constant_transposes(model)
    if folded:
        # Tied embeddings export as Transpose(embedding) -> lm_head MatMul; NNCF only compresses a
        # MatMul whose weight is an initializer, so the transpose is folded (the table is stored twice,
        # once as the Gather's, once as the MatMul's weight, and each is compressed).
        notes.append(f"folded constant Transpose into MatMul weights: {', '.join(folded)}")
    eligible = _matmul_weights(model)
    if not eligible:
        raise NotApplicable("not applicable: weight-only compression needs MatMul/Gemm layers with constant weights, "
                            "this graph has none", hint="use int8-dynamic or int8-qdq for convolutional models")
    # NNCF 3.4 also compresses Conv weights, but its per-axis DequantizeLinear for Conv fails in ORT
    # ("scale must be 1D tensor with size C"): weight-only stays on MatMul/Gemm, as intended.
    conv_types = sorted({n.op_type for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")})
    raw = options.get("ignored_scope") or {}
    raw = {"names": list(raw)} if isinstance(raw, (list, tuple)) else dict(raw) if isinstance(raw, dict) else raw
    if conv_types and isinstance(raw, dict):
        raw["types"] = sorted(set(raw.get("types") or []) | set(conv_types))
    scope, scope_dict = _ignored_scope({**options, "ignored_scope": raw})
    settings: dict[str, Any] = {"backend": "nncf", "ignored_scope": scope_dict}
    kwargs: dict[str, Any] = {"ignored_scope": scope}
    if int4:
        gs = int(options.get("group_size", 128))
        fallback = str(options.get("group_size_fallback", "adjust")).lower()
        if fallback not in ("error", "ignore", "adjust"):
            raise ConfigError(f"unknown group_size_fallback '{fallback}'", hint="valid: error, ignore, adjust")
        ratio = float(options.get("ratio", 1.0))
        all_layers = bool(options.get("all_layers", False))
        kwargs.update(mode=nncf.CompressWeightsMode.INT4_SYM, group_size=gs, ratio=ratio, all_layers=all_layers,
                      advanced_parameters=AdvancedCompressionParameters(
                          group_size_fallback_mode=GroupSizeFallbackMode(fallback)))
        settings.update(mode="int4_sym", group_size=gs, ratio=ratio, all_layers=all_layers,
                        group_size_fallback=fallback)
    else:
        kwargs.update(mode=nncf.CompressWeightsMode.INT8_ASYM)
        settings.update(mode="int8_asym")
    try:
        with _quiet():
            out = nncf.compress_weights(model, **kwargs)
    except nncf.InvalidGroupSizeError as e:
        raise ConfigError(f"int4-weight: group_size {settings.get('group_size')} does not divide the layers' input "
                          f"channels", hint="pick a group_size that divides them or set group_size_fallback: adjust"
                          ) from e
    if int4:
        n4 = sum(1 for n in out.graph.node if n.op_type == "MatMulNBits")
        if n4 == 0:
            # NNCF keeps the first/last layer and too-narrow layers in INT8: nothing became INT4.
            raise NotApplicable(f"not applicable: no MatMul/Gemm layer could be compressed to INT4 "
                                f"(group_size {settings['group_size']}; eligible: {', '.join(eligible)})",
                                hint="set all_layers: true or a smaller group_size, or drop int4-weight")
        settings["int4_layers"] = n4
    added = ensure_domain_imports(out)
    if added:
        notes.append(f"declared opset domain(s) NNCF left undeclared: {', '.join(added)}")
    # onto onnxruntime's weight-only kernels (edgekd/quantize/nbits.py): no weight value changes
    level = int(options.get("accuracy_level", 4))
    settings.update(accuracy_level=level, lowered=lower_weight_only(out, accuracy_level=level))
    onnx.save(out, str(dst))
    return settings


# revision 2: lowered onto onnxruntime's weight-only kernels (edgekd/quantize/nbits.py)
@candidate("int8-weight", kind="weight-only", supports_exclusion=False, options=("ignored_scope", "accuracy_level"),
           revision=2,
           description="INT8 weights (asymmetric, per-channel) by NNCF, run by onnxruntime's MatMulNBits with INT8 "
                       "activations per block (accuracy_level 4; 0: FP32 activations, DequantizeLinear)")
def _make_int8_weight(src: Path, dst: Path, calib: CalibSet | None, options: dict[str, Any], notes: list[str]) -> dict:
    return _weight_only(src, dst, options, notes, int4=False)


@candidate("int4-weight", kind="weight-only", supports_exclusion=False, revision=2,
           options=("ignored_scope", "group_size", "ratio", "all_layers", "group_size_fallback", "accuracy_level"),
           description="INT4 weights (symmetric, grouped) by NNCF -> MatMulNBits, INT8 activations per block "
                       "(accuracy_level 4; 0: FP32); for MatMul/Gemm-heavy graphs")
def _make_int4_weight(src: Path, dst: Path, calib: CalibSet | None, options: dict[str, Any], notes: list[str]) -> dict:
    return _weight_only(src, dst, options, notes, int4=True)


# --------------------------------------------------------------------------- entry points


def make_candidate(name: str, fp32_path: Path, out_path: Path, calib: np.ndarray | None,
                   options: dict[str, Any] | None = None,
                   smoke: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Make candidate `name` from the FP32 ONNX at `fp32_path` into `out_path` (atomically).

    Returns {name, kind, path, size_bytes, params, quantized_nodes, settings, notes, seconds}.
    Raises ConfigError/DataError (exit 2) for bad names/options/calibration data, NotApplicable
    (a StageError whose message starts "not applicable:") and StageError for conversion failures.
    The result is loaded and run once in onnxruntime before it is moved into place: by `smoke(path)`
    when given (a graph with several inputs, e.g. a KV-cache decoder, whose task knows how to feed it),
    else on a calibration batch or zeros of the single input's shape.
    """
    import onnx

    validate_candidate_names([name])
    options = dict(options or {})
    check_options(options)
    spec = CANDIDATES[name]
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise StageError(f"FP32 model not found: {fp32_path}", hint="run the export stage first")
    calib_set = calibration_set(fp32_path, calib, options, default_batch=1 if name == "int8-nncf" else 16) \
        if spec.needs_calibration else None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.{os.getpid()}.tmp.onnx")
    notes: list[str] = []
    t0 = time.perf_counter()
    try:
        try:
            settings = spec.make(fp32_path, tmp, calib_set, options, notes)
        except (ConfigError, DataError, NotApplicable):
            raise
        except Exception as e:  # noqa: BLE001 - any SDK failure becomes a typed stage failure
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise StageError(f"{name}: {type(e).__name__}: {msg}"[:500],
                             hint="see the stage log (--debug) for the traceback; other candidates still run") from e
        if smoke is None:
            _smoke_run(name, tmp, fp32_path, calib_set)
        else:
            _task_smoke_run(name, tmp, smoke)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    model = onnx.load(str(out_path), load_external_data=False)
    return {
        "name": name, "kind": spec.kind, "path": str(out_path), "size_bytes": out_path.stat().st_size,
        "params": _param_count(model), "quantized_nodes": len(sensitivity.quantized_nodes(model)),
        "settings": settings, "notes": notes, "seconds": round(time.perf_counter() - t0, 3),
    }


def _task_smoke_run(name: str, path: Path, smoke: Callable[[Path], None]) -> None:
    try:
        smoke(path)
    except (ConfigError, DataError, StageError):
        raise
    except Exception as e:  # noqa: BLE001 - re-raised as a typed failure
        raise StageError(f"{name}: the converted model does not run in onnxruntime CPU: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}"[:500],
                         hint="drop this candidate from quantize.candidates for this model") from e


def _smoke_run(name: str, path: Path, fp32_path: Path, calib: CalibSet | None) -> None:
    """Load and run once in ORT CPU, so a candidate that cannot run fails here, not in the profiler."""
    if calib is not None:
        x = calib.batches[0]
    else:
        spec = input_spec(fp32_path)
        x = np.zeros([d or 1 for d in spec.dims], dtype=spec.dtype)
    try:
        sess = session(path)
        out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    except Exception as e:  # noqa: BLE001 - re-raised as a typed failure
        raise StageError(f"{name}: the converted model does not run in onnxruntime CPU: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}"[:500],
                         hint="drop this candidate from quantize.candidates for this model") from e
    if np.issubdtype(out.dtype, np.floating) and not np.all(np.isfinite(out)):
        raise StageError(f"{name}: the converted model outputs NaN/Inf", hint="drop this candidate for this model")


def accuracy_aware(name: str, fp32_path: Path, out_path: Path, calib: np.ndarray | None, options: dict[str, Any],
                   eval_fn: Callable[[Path], float], max_drop_points: float | Budget) -> dict[str, Any]:
    """Make `name`; if its accuracy (eval_fn on VALIDATION data, a fraction) drops more than the budget
    below FP32's, keep the most sensitive quantized nodes in FP32, one at a time, until it fits
    (sensitivity.keep_fp32_search over single nodes).

    Sensitivity (sensitivity.py) is measured on calibration samples against FP32 logits:
    `sensitivity_method` "exclusion" (default up to `max_sensitivity_nodes` nodes) or "layer-error".
    Gives up after `max_exclusion_steps` (default 5) nodes. The returned info carries
    `val_accuracy` and `accuracy_aware` {fp32_val_accuracy, initial_accuracy, within_budget,
    kept_fp32_nodes, steps, ranking, method}; a candidate that never fits is still returned (the
    selector marks it over-budget).
    """
    budget = max_drop_points if isinstance(max_drop_points, Budget) else Budget(max_drop_points)
    options = dict(options or {})
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    info = make_candidate(name, fp32_path, out_path, calib, options)
    ref_acc = float(eval_fn(fp32_path))
    acc = float(eval_fn(out_path))
    fits = budget.within(ref_acc, acc)
    report: dict[str, Any] = {"fp32_val_accuracy": ref_acc, "initial_accuracy": acc, "max_drop_points": budget.points,
                              "kept_fp32_nodes": list(options.get("nodes_to_exclude") or []), "steps": [],
                              "ranking": [], "method": None}
    spec = CANDIDATES[name]
    if fits or not spec.supports_exclusion:
        if not fits:
            report["note"] = f"{name} cannot leave nodes in FP32; no accuracy recovery tried"
        report["within_budget"] = fits
        return {**info, "val_accuracy": acc, "accuracy_aware": report}

    import onnx

    cal = calibration_set(fp32_path, calib, options)
    x = np.concatenate(cal.batches)[: int(options.get("sensitivity_samples", 128))]
    ref_logits = run_onnx(fp32_path, x)
    # Names as nodes_to_exclude/ignored_scope expect them; dedupe keeps graph order.
    nodes = list(dict.fromkeys((sensitivity.source_node_name(n, op), op)
                               for n, op in sensitivity.quantized_nodes(onnx.load(str(out_path)))))
    base_excluded = list(options.get("nodes_to_exclude") or [])
    nodes = [n for n in nodes if n[0] not in base_excluded]
    cap = int(options.get("max_sensitivity_nodes", 32))
    # The method's values are checked when the card loads (config.SENSITIVITY_METHODS); check_options re-checks.
    method = str(options.get("sensitivity_method") or ("exclusion" if len(nodes) <= cap else "layer-error"))
    if method == "layer-error" and spec.kind == "dynamic":
        # Dynamic graphs have no float tensor after each quantized op to compare: rank by exclusion.
        report["note"] = "layer-error needs a QDQ graph; ranked int8-dynamic nodes by exclusion"
        method = "exclusion"

    final: dict[str, Any] = {}  # make_candidate's info for the last model written to out_path

    def build(excluded: list[str], path: Path) -> None:
        made = make_candidate(name, fp32_path, path, calib, {**options, "nodes_to_exclude": excluded})
        if Path(path) == out_path:
            final.update(made)

    with tempfile.TemporaryDirectory(dir=out_path.parent) as td:
        trial = Path(td) / "trial.onnx"

        def run_excluding(names: list[str]) -> np.ndarray:
            build(base_excluded + names, trial)
            return run_onnx(trial, x)

        if method == "exclusion":
            if len(nodes) > cap:  # rank weighted ops first: they hold most of the quantization error
                nodes = [n for n in nodes if n[1] in sensitivity.WEIGHTED_OPS][:cap]
            ranking = sensitivity.rank_by_exclusion(nodes, ref_logits, run_excluding)
        else:
            ranking = sensitivity.rank_by_layer_error(fp32_path, out_path, x)
    report["method"] = method
    report["ranking"] = [{"node": s.node, "op_type": s.op_type, "score": s.score} for s in ranking[:10]]

    order = list(dict.fromkeys(s.node for s in ranking))
    found = sensitivity.keep_fp32_search({n: [n] for n in order}, build, eval_fn, out_path, reference=ref_acc,
                                         initial=acc, budget=budget, base=base_excluded, order=order,
                                         max_steps=int(options.get("max_exclusion_steps", 5)))
    info = final or info  # each step rebuilt out_path: the last build's size/settings are the ones shipped
    report["steps"] = [{"kept_fp32": s["kept_fp32"], "accuracy": s["accuracy"]} for s in found.steps]
    report["kept_fp32_nodes"] = found.kept_nodes
    report["within_budget"] = found.within_budget
    return {**info, "val_accuracy": found.score, "accuracy_aware": report}


def keep_groups_fp32(name: str, fp32_path: Path, out_path: Path, options: dict[str, Any],
                     evaluate: Callable[[Path], float], *, reference: float, initial: float, budget: Budget,
                     rank_evaluate: Callable[[Path], float] | None = None,
                     notes: list[str] | None = None, smoke: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """The accuracy-aware fallback by node kind (language models): candidate `name` at `out_path` scores
    `initial` (`evaluate`, validation data) and is over `budget` against `reference`, so keep whole groups
    (one node kind across every layer, sensitivity.layer_groups) in FP32, the one whose exclusion recovers
    most `rank_evaluate` score first (a cheap validation subset; default `evaluate`), until within budget
    or `max_exclusion_steps` (default 3) groups are kept. Rewrites `out_path`; returns the record (the
    classifier's `accuracy_aware` keys plus groups/kept_fp32_groups).

    Every trial is made by make_candidate (its error wrapping and smoke run): `smoke` runs a graph whose inputs
    make_candidate cannot feed by itself (a KV-cache decoder), as the caller's task knows how."""
    import onnx

    out_path = Path(out_path)
    groups = sensitivity.layer_groups(onnx.load(str(out_path), load_external_data=False))

    def build(excluded: list[str], path: Path) -> None:
        make_candidate(name, Path(fp32_path), path, None, {**options, "nodes_to_exclude": excluded}, smoke=smoke)

    found = sensitivity.keep_fp32_search(groups, build, evaluate, out_path, reference=reference, initial=initial,
                                         budget=budget, base=list(options.get("nodes_to_exclude") or []),
                                         rank_evaluate=rank_evaluate,
                                         max_steps=int(options.get("max_exclusion_steps", 3)))
    if notes is not None:
        notes.append(f"{name}: {initial:.1%} -> {found.score:.1%} validation {budget.metric} (fp32 {reference:.1%}) "
                     f"with {', '.join(found.kept_groups) or 'nothing'} kept in FP32")
    return {"fp32_val_accuracy": reference, "initial_accuracy": initial, "max_drop_points": budget.points,
            "method": "group-exclusion", "groups": len(groups), "kept_fp32_groups": found.kept_groups,
            "kept_fp32_nodes": found.kept_nodes, "steps": found.steps, "ranking": found.ranking,
            "within_budget": found.within_budget}
