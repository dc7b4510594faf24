"""The Task interface: what differs between tasks, handed to the shared stages as a value.

A task (classification.py, text_generation.py) supplies only what is its own: the stages that make
its teacher and student (teacher, [generate], distill, export), how a quantized candidate is
evaluated (top-1 accuracy; next-token agreement and perplexity), how its models are timed, and its
report rows. The stages quantize, profile, select, convert and report are written once
(tasks/stages/) and call these hooks. A task is a frozen dataclass of functions (as a target family
is), registered by name in the one explicit table of tasks/__init__.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

    from edgekd.pipeline import BuildContext, Stage, StageResult  # noqa: F401 (the Inputs alias names it)

Inputs = dict[str, "StageResult"]
Tick = Callable[[str, int], None]  # progress: tick(what runs now, total units) after each unit of work


# a QuantizePlan's intermediate files (a variant's starting graph) go under the stage folder's SCRATCH, which the
# quantize stage removes when its candidates are made: they are not the stage's outputs
SCRATCH = "scratch"


@dataclass
class QuantizePlan:
    """How a task's candidates are made and judged; the shared quantize loop does the rest.

    `validate`/`test` evaluate a candidate file on the validation/test split and return a dict whose
    "score" is the budgeted metric (a fraction, higher is better); the other keys are reported with it
    (`fields` picks what goes into the candidate's entry). Every choice (the keep-in-FP32 search, the
    selection) reads `validate` only; `test` only reports."""

    names: list[str]                                   # the candidates to make, fp32 first
    not_built: list[dict[str, str]]                    # asked for, but the target cannot ship their kind
    options: dict[str, Any]                            # the candidate makers' options (checked)
    calib: "np.ndarray | None"                         # calibration samples (None: the graph takes no plain tensor)
    validate: Callable[[Path], dict[str, Any]]
    test: Callable[[Path], dict[str, Any]]
    fields: Callable[[str, Path, dict[str, Any], dict[str, Any]], dict[str, Any]]  # (name, path, val, test) -> entry keys
    metric: str                                        # what "score" is, in words
    grouping: Literal["node", "layer-groups"] = "node"  # keep-in-FP32 unit: "node" or "layer-groups" (one kind across layers)
    smoke: Callable[[Path], None] | None = None        # run a made candidate once (None: make_candidate's own)
    rank: Callable[[Path], float] | None = None        # a cheaper validation score that ranks keep-in-FP32 trials
    special: dict[str, Callable[[Path], dict[str, Any]]] = field(default_factory=dict)  # makers only this task has
    # candidates made by a registered maker from another FP32 graph: name -> () -> (the maker's name, that graph,
    # what the entry's info says of it); e.g. a language model's int8-dynamic-vocab: int8-dynamic of the student with
    # its head trimmed (judged against the untrimmed fp32 like every candidate)
    variants: dict[str, Callable[[], tuple[str, Path, dict[str, Any]]]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # extra stage metrics (calibration hash...)


@dataclass
class ReportParts:
    """A task's share of report.json: its model rows (teachers first), its candidate rows and the sections
    only it has. The shared assembler adds the header, the target's artifact rows, the comparison, the
    selection and the notes every report carries."""

    models: list[dict[str, Any]]
    candidates: list[dict[str, Any]]
    teacher_same_runtime: str | None       # the teacher row timed on the student's runtime (role/variant)
    training: dict[str, Any]
    parity: dict[str, Any]
    control: dict[str, Any] | None
    notes: list[str]
    sections: dict[str, Any] = field(default_factory=dict)   # task-only top-level keys (generation, ...)
    environment: dict[str, Any] | None = None


@dataclass(frozen=True)
class Task:
    name: str
    recipe_tasks: tuple[str, ...]                      # the recipe `task:` values this task builds
    summary: str
    # Its own stages, in order, ending with "export" (teacher, [generate], distill, export).
    front: Callable[[], list["Stage"]]
    # quantize: which stages it reads, the card sections its key hashes, its key material (and pre-flight)
    quantize_deps: tuple[str, ...]
    quantize_reads: tuple[str, ...]
    quantize_cfg: Callable[["BuildContext"], dict[str, Any]]
    quantize_plan: Callable[[Inputs, "BuildContext", Path], QuantizePlan]
    # profile: same, and the timing of every model in the stage folder (logs/ is there for the workers):
    # (rows by "role/variant", stage metrics with at least "settings", extra output files by name)
    profile_deps: tuple[str, ...]
    profile_reads: tuple[str, ...]
    profile_cfg: Callable[["BuildContext"], dict[str, Any]]
    profile_models: Callable[[Inputs, "BuildContext", Path, Tick],
                             tuple[dict[str, dict], dict[str, Any], dict[str, str]]]
    # report: the stages it reads and its rows/sections from their result files
    report_stages: tuple[str, ...]                     # must be finished; the optional convert stage is read when present
    report_parts: Callable[[Path, dict[str, dict], dict[str, Any]], ReportParts]
    # convert: the target family's job for this task's selected student (None: the task ships its ONNX only)
    convert_deps: tuple[str, ...] = ()
    convert_reads: tuple[str, ...] = ()
    convert_job: Callable[[Inputs, "BuildContext", Path], Any] | None = None
    # quantized_teacher: the teacher quantized by the student's candidate makers (evaluate.quantized_teacher), scored
    # and timed like the student's rows: (inputs, ctx, wd, kinds, tick) -> rows by "teacher/<kind>", each
    # {variant, quantization, format, runtime, path (in wd), size_bytes, params, accuracy, [perplexity], profile | error}
    quantized_teacher_kinds: tuple[str, ...] = ()      # evaluate.quantized_teacher: null means these
    quantized_teacher_allowed: tuple[str, ...] = ()    # the kinds this task's teacher can be made as
    quantized_teacher_deps: tuple[str, ...] = ()
    quantized_teacher_reads: tuple[str, ...] = ()
    quantized_teacher_cfg: Callable[["BuildContext"], dict[str, Any]] | None = None
    quantized_teacher: Callable[[Inputs, "BuildContext", Path, list[str], Tick], dict[str, dict[str, Any]]] | None = None
