"""The report.json contract (ARCHITECTURE.md, "Contracts") as pydantic models, the JSON Schema they
publish (`edgekd report --schema`, report.schema.json), its checker and loader, and atomic writes.

The models allow extra keys everywhere ("more keys are welcome; these must exist") and validate in
strict mode: a number must be a JSON number (not a bool, not a string, not NaN/inf), so the rules are
the ones a CI user gets from the published schema. `check_report` returns one line per problem, each
naming the field (`models[1].latency_ms: missing 'p99'`); the report dict itself is never rewritten.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from edgekd.errors import UserError

REPORT_SCHEMA_VERSION = 1

Role = Literal["teacher", "student"]
MeasuredOn = Literal["device", "host", "estimate"]  # where a row's latency/energy figures come from
ROLES: tuple[str, ...] = get_args(Role)
MEASURED_ON: tuple[str, ...] = get_args(MeasuredOn)
MEASURED_ENERGY_METHODS = ("rapl", "nvml", "npu-smi")
CANDIDATE_STATUSES = ("selected", "over-budget", "slower-than-fp32", "within-noise-of-fp32", "larger-than-fp32", "kept",
                      "unsupported-on-target", "misses-device-budget")  # or "failed: <reason>"
# One regex per rule serves the validator and the published schema, so the two cannot disagree. The
# names are [a-z0-9-] and go in unescaped: `\-` is not a valid escape in a JSON Schema (ECMA-262, u) regex.
ENERGY_METHOD_PATTERN = "^(" + "|".join(MEASURED_ENERGY_METHODS) + r"|estimate-.+)$"
# a failure reason may span lines (an exception's text), hence [\s\S] rather than .
CANDIDATE_STATUS_PATTERN = "^(" + "|".join(CANDIDATE_STATUSES) + r"|failed[\s\S]*)$"

_ERR = "edgekd_contract"  # the error type of our own rules: their message is already the whole sentence


def _contract(message: str, field: str = "") -> PydanticCustomError:
    """A rule's error; `field` (dotted) names the field below the validated object, for rules that
    compare fields (a model validator's error is otherwise located at the object)."""
    return PydanticCustomError(_ERR, message, {"field": field} if field else None)


def energy_is_valid(method: Any) -> bool:
    """A measured counter's label or `estimate-<model>`: an estimate is never labelled as measured."""
    return isinstance(method, str) and re.fullmatch(ENERGY_METHOD_PATTERN, method) is not None


def _fraction(x: float) -> float:
    if not 0 <= x <= 1:
        raise _contract(f"expected a fraction in [0, 1] or null, got {x!r}")
    return x


def _energy_method(m: str) -> str:
    if not energy_is_valid(m):
        raise _contract(f"'{m}' is neither measured ({', '.join(MEASURED_ENERGY_METHODS)}) nor 'estimate-<model>'")
    return m


def _status(s: str) -> str:
    if re.fullmatch(CANDIDATE_STATUS_PATTERN, s) is None:
        raise _contract(f"'{s}' is not one of {', '.join(CANDIDATE_STATUSES)}, failed: <reason>")
    return s


def _version(v: int) -> int:
    if v != REPORT_SCHEMA_VERSION:
        raise _contract(f"{v!r}, expected {REPORT_SCHEMA_VERSION}")
    return v


def _selected(s: str) -> str:
    if "/" not in s:
        raise _contract(f"expected '<role>/<variant>', got {s!r}")
    return s


Number = Annotated[float, Field(allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(allow_inf_nan=False, json_schema_extra={"minimum": 0, "maximum": 1}),
                     AfterValidator(_fraction)]
Perplexity = Annotated[float, Field(ge=1, allow_inf_nan=False)]  # exp(mean NLL) with NLL >= 0
EnergyMethod = Annotated[str, Field(json_schema_extra={"pattern": ENERGY_METHOD_PATTERN},
                                    description="rapl, nvml, npu-smi (measured) or estimate-<model>"),
                         AfterValidator(_energy_method)]
CandidateStatus = Annotated[str, Field(json_schema_extra={"pattern": CANDIDATE_STATUS_PATTERN}), AfterValidator(_status)]
# strict int: `true` is not version 1 (a Literal[1] would take it)
SchemaVersion = Annotated[int, Field(json_schema_extra={"const": REPORT_SCHEMA_VERSION}), AfterValidator(_version)]
Selected = Annotated[str, Field(json_schema_extra={"pattern": "/"}, description="'<role>/<variant>' of a models row"),
                     AfterValidator(_selected)]

# Union branches add a tag to an error's location; these are ours and are dropped when naming the field.
_TAGS = {"<value>", "<per-set>"}


def _per_set(item: Any) -> Any:
    """A figure, or one per evaluation set ({"in-template": 0.5, "held-out": 0.4, ...})."""
    return Annotated[Union[Annotated[item, Tag("<value>")], Annotated[dict[str, Union[item, None]], Tag("<per-set>")]],
                     Discriminator(lambda v: "<per-set>" if isinstance(v, dict) else "<value>")]


class _Open(BaseModel):
    """More keys are welcome; the listed ones must exist with these types."""

    model_config = ConfigDict(extra="allow", strict=True)


class LatencyStats(_Open):
    """Milliseconds; null where the source has no such figure (msit prints no p90; an estimate is one number)."""

    p50: NonNegative | None
    p90: NonNegative | None
    p99: NonNegative | None
    mean: NonNegative | None
    n: NonNegative | None = Field(description="samples behind the figures")


class Energy(_Open):
    """Per inference (text generation: per generated token); `method` says how it was obtained."""

    joules_per_inference: Number | None
    method: EnergyMethod


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # `null` is refused: the key is absent or one of the enum


class ModelRow(_Open):
    """One artifact as profiled: the teacher or a student variant, on the runtime it ships with."""

    # The cross-field rules of `_cross_field`, for JSON Schema validators.
    model_config = ConfigDict(json_schema_extra={
        "dependentSchemas": {"measured_on": {"required": ["device"],
                                             "properties": {"device": {"type": "string", "minLength": 1}}}},
        "if": {"required": ["measured_on"], "properties": {"measured_on": {"const": "estimate"}}},
        "else": {"properties": {"latency_ms": {"properties": {"p50": {"type": "number"}}}}},
    })

    role: Role
    variant: str
    format: str
    runtime: str
    path: str = Field(description="relative to the build folder")
    params: NonNegative | None
    size_bytes: NonNegative | None
    accuracy: Fraction | None = Field(description="top-1 accuracy; text generation: next-token agreement")
    latency_ms: LatencyStats = Field(description="per inference; text generation: per generated token")
    throughput_per_s: Number | None
    peak_rss_bytes: NonNegative | None
    energy: Energy
    # absent in reports made before it existed; when present it is one of the three (not null)
    measured_on: MeasuredOn = Field(None, description="where the latency and energy figures come from",  # type: ignore[assignment]
                                    json_schema_extra=_no_default)
    device: str | None = Field(None, description="the device's name; required with measured_on")
    # Text generation, per generated token (optional: filled by the text-generation builder)
    ttft_ms: LatencyStats | None = Field(None, description="time to first token (prefill of the prompt)")
    ms_per_token: LatencyStats | None = Field(None, description="decode latency per generated token")
    tokens_per_s: NonNegative | None = None
    macs_per_token: NonNegative | None = Field(
        None, description="multiply-accumulates of the linear layers per decoded token (report decode_compute)")
    joules_per_token: NonNegative | None = None
    agreement: _per_set(Fraction) | None = Field(  # type: ignore[valid-type]
        None, description="next-token agreement with the teacher, or one per evaluation set")
    perplexity: _per_set(Perplexity) | None = Field(None, description="or one per evaluation set")  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _cross_field(self) -> ModelRow:
        if self.measured_on != "estimate" and self.latency_ms.p50 is None:
            raise _contract("a measured row needs a p50", "latency_ms.p50")
        if "measured_on" in self.model_fields_set and not self.device:
            raise _contract("a row with measured_on needs the device's name", "device")
        return self


class Environment(_Open):
    """The machine the host figures come from."""

    cpu: str | None
    threads: int | None
    runtimes: dict[str, str | None] = Field(description="{name: version}")


class Comparison(_Open):
    """Teacher (FP32, its native runtime) over the selected student artifact."""

    speedup_p50: Number | None
    size_ratio: Number | None
    peak_rss_ratio: Number | None
    energy_ratio: Number | None
    accuracy_retention: Number | None
    kd_gain_points: Number | None = Field(None, description="points the KD student beats the labels-only control by")
    distill_vs_quantize: dict[str, Any] | None = Field(
        None, description="the selected ONNX student against the teacher quantized on the same runtime (rows with a "
                          "`quantization`): its figures, theirs, the verdict on speed and on size (beats | pareto | "
                          "dominated) and the one-line `sentence`; absent when no such row was made")


class Control(_Open):
    """The labels-only control student."""

    accuracy: Fraction | None = None


class Training(_Open):
    """How the teacher and student were trained; `control` is the labels-only control student."""

    control: Control | None = None


class Candidate(_Open):
    """A quantization candidate of the student and what the selection made of it."""

    variant: str
    format: str | None
    path: str | None
    accuracy: Fraction | None
    val_accuracy: Fraction | None
    latency_ms: LatencyStats | None
    size_bytes: NonNegative | None
    status: CandidateStatus


def _report_schema_extra(schema: dict[str, Any]) -> None:
    # A teacher row and a student row, for JSON Schema validators. `selected` naming a models row is
    # the one rule a JSON Schema cannot say; check_report says it.
    schema["properties"]["models"]["allOf"] = [
        {"contains": {"type": "object", "properties": {"role": {"const": role}}, "required": ["role"]}} for role in ROLES]


class Report(_Open):
    """edgekd report.json (the contract in ARCHITECTURE.md): more keys are welcome at every level;
    `selected` must also name a row of `models`."""

    model_config = ConfigDict(title="edgekd report.json", json_schema_extra=_report_schema_extra)

    schema_version: SchemaVersion
    recipe: str | None
    target: str | None
    created: str
    edgekd_version: str
    environment: Environment
    models: list[ModelRow] = Field(min_length=1)
    selected: Selected
    comparison: Comparison
    candidates: list[Candidate] | None = None
    training: Training | None = None

    @model_validator(mode="after")
    def _cross_field(self) -> Report:
        roles = {m.role for m in self.models}
        for role in ROLES:
            if role not in roles:
                raise _contract(f"no {role} entry", "models")
        keys = {f"{m.role}/{m.variant}" for m in self.models}
        if self.selected not in keys:
            raise _contract(f"'{self.selected}' is not among models ({', '.join(sorted(keys))})", "selected")
        return self


def report_json_schema() -> dict[str, Any]:
    """The JSON Schema of report.json that the models enforce (what `edgekd report --schema` prints)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Report.model_json_schema()}


def report_schema_text() -> str:
    """report_json_schema() as the committed edgekd/report/report.schema.json holds it."""
    return json.dumps(report_json_schema(), indent=2) + "\n"


# "more keys are welcome; these must exist" (read off the models, for callers that list them)
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    kind: tuple(name for name, f in model.model_fields.items() if f.is_required())
    for kind, model in (("report", Report), ("environment", Environment), ("model", ModelRow),
                        ("latency_ms", LatencyStats), ("energy", Energy), ("comparison", Comparison),
                        ("candidate", Candidate))}

# pydantic's wording for a wrong type, said the way the rest of our messages say it
_TYPE_WORDS = {"model_type": "expected an object", "dict_type": "expected an object", "list_type": "expected a list",
               "float_type": "expected a number", "int_type": "expected an integer", "string_type": "expected a string",
               "finite_number": "expected a finite number", "too_short": "expected a non-empty list"}


def _where(loc: list[Any]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _short(x: Any) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def _problem(err: Any, root: str) -> str:
    loc = [p for p in err["loc"] if p not in _TAGS]
    field = (err.get("ctx") or {}).get("field")
    if field:
        loc += field.split(".")
    if err["type"] == "missing":
        return f"{_where(loc[:-1]) or root}: missing '{loc[-1]}'"
    where = _where(loc) or root
    if err["type"] == _ERR:
        return f"{where}: {err['msg']}"
    if err["type"] == "greater_than_equal":
        words = f"expected a number >= {err['ctx']['ge']:g}"
    else:
        words = _TYPE_WORDS.get(err["type"]) or (err["msg"][:1].lower() + err["msg"][1:])
    return f"{where}: {words}, got {_short(err['input'])}"


def check_report(d: Any) -> list[str]:
    """Problems with a report against the contract, each naming its field; empty when it conforms."""
    if not isinstance(d, dict):
        return ["report: expected a JSON object"]
    try:
        Report.model_validate(d)
    except ValidationError as e:
        return [_problem(err, "report") for err in e.errors(include_url=False)]
    return []


def load_report(path: Path | str, strict: bool = True) -> dict:
    """Read a report.json; UserError (exit 2) for a missing file, bad JSON, another schema_version
    or (strict) a report that breaks the contract."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise UserError(f"report not found: {path}", hint="run `edgekd build` first, or pass the path to a report.json")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); the file may be truncated",
                        hint="re-run `edgekd report` on the build directory to rewrite it") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text", hint="pass a report.json written by edgekd") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a JSON object at the top level", hint="pass a report.json written by edgekd")
    version = d.get("schema_version")
    if version != REPORT_SCHEMA_VERSION:
        raise UserError(f"{path}: report schema_version {version!r} is not supported (this edgekd reads {REPORT_SCHEMA_VERSION})",
                        hint="regenerate the report (and the baseline) with this edgekd version")
    if strict:
        problems = check_report(d)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UserError(f"{path}: not a valid report: {problems[0]}{more}",
                            hint="regenerate it with `edgekd report`; the contract is in ARCHITECTURE.md")
    return d


# --------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Readers never see half a file, and the file survives a power loss (edgekd.fsio)."""
    from edgekd.fsio import write_bytes_atomic

    return write_bytes_atomic(path, data)


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _clean(x: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def dumps_report(report: dict) -> str:
    return json.dumps(_clean(report), indent=2, allow_nan=False) + "\n"
