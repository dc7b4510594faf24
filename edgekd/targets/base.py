"""What a target family declares: its up-front checks, its availability probe, its convert step.

A family is a value (a frozen dataclass of functions), not a class hierarchy; the four families
live one per module and are listed in one explicit table in `edgekd/targets/__init__.py`.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from edgekd.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

    from edgekd.config import DeviceConfig, TargetConfig

Capability = tuple[str, bool, str]  # (capability, available here, why / what provides it)


@dataclass
class ClassifierPayload:
    """What a classifier adds to a ConvertJob: the bundle's metadata and the data its shipped
    artifacts report on. Converters read it only where they need a classifier's specifics."""

    class_names: list[str] | None
    normalization: dict[str, Any]
    x_test: "np.ndarray | None" = None  # the test split: shipped artifacts REPORT accuracy on it
    y_test: "np.ndarray | None" = None
    x_val: "np.ndarray | None" = None   # validation samples (per-layer sensitivity: choices)
    y_val: "np.ndarray | None" = None
    student_accuracy: float | None = None  # the FP32 student's test accuracy (torch): reported
    student_val_accuracy: float | None = None  # the FP32 student ONNX's validation accuracy: what choices compare with


@dataclass
class LanguageModelPayload:
    """What a causal language model adds to a ConvertJob. The student is a Hugging Face folder (weights,
    config, tokenizer files); val/test are token sequences (`llm.sequences.Example`: prompt + the
    teacher's answer, loss on the answer) that next-token agreement is measured on; prompts are the
    chat-formatted prompt ids a greedy decode starts from. Choices (precision, candidates) are made on
    val; test only reports."""

    student_dir: Path                 # the distilled student (HF folder with its tokenizer files)
    teacher_dir: Path                 # the teacher (HF folder): the like-for-like row on the target runtime
    val: list[Any]                    # llm.sequences.Example (validation split)
    test: list[Any]                   # llm.sequences.Example (test split)
    val_prompts: list[list[int]]      # chat-formatted prompt ids (validation prompts: parity of greedy tokens)
    test_prompts: list[list[int]]     # chat-formatted prompt ids (test prompts: the device benchmark)
    pad_id: int
    stop_ids: list[int]
    max_length: int                   # prompt + answer tokens the student was trained on (cache length)
    max_new_tokens: int
    chat_template: str | None = None
    student_agreement: float | None = None      # the FP32 student's test agreement (torch): reported
    student_val_agreement: float | None = None  # the FP32 student ONNX's validation agreement: what choices compare with
    candidates: list[dict[str, Any]] = field(default_factory=list)  # the quantize stage's candidate entries
    teacher_on_target: bool = True   # also convert and time the teacher on the target's runtime (generate.teacher_on_target)
    bench: Any = None  # profile.spec.GenerationSettings: how the profile stage times generation (the family's rows too)


@dataclass
class ConvertJob:
    """Everything a family's convert step may use, handed over by any task: the same fields for a
    classifier and a language model; what only one task has rides in `payload`."""

    wd: Path                    # the convert stage's folder: write only inside it
    target: "TargetConfig"
    selected: str               # the selected candidate's variant
    onnx_path: Path             # the selected candidate's ONNX
    fp32_onnx: Path             # the FP32 student ONNX (export stage)
    student: Any                # the FP32 torch student (eval mode); None when the task has none
    example: "dict[str, np.ndarray]"        # {input name: array}: reference feeds for parity checks
    expected: "list[np.ndarray]"            # the torch student's outputs on `example`, in output order
    calib: "dict[str, np.ndarray]"          # {input name: calibration samples} (train split)
    input_shapes: dict[str, list[int]]      # the exported graph's input shapes (batch as exported)
    # ONNX path -> score on VALIDATION data (higher is better): what precision/keep-in-FP32 choices
    # are made on. Test data only reports (payload).
    evaluate: Callable[[Path], float] | None = None
    budget_points: float = 0.5  # the recipe's accuracy budget (points vs the FP32 student)
    payload: Any = None         # task-specific (ClassifierPayload for classifiers)
    options: dict[str, Any] = field(default_factory=dict)   # build options (allow_unsupported, ...)
    host_device: Any = None     # DeviceConfig of this host (host-proxy rows: roofline/energy)
    log: Callable[[str], None] | None = None

    def single_io(self, what: str) -> tuple[str, "np.ndarray", "np.ndarray", "np.ndarray"]:
        """(input name, example, expected output, calibration samples) of a one-input, one-output
        model: what the classifier-style bundles take. UserError (exit 2) for any other model."""
        from edgekd.errors import UserError

        if len(self.example) != 1 or len(self.expected) != 1:
            raise UserError(f"{what} takes a model with one input and one output; this one has {len(self.example)} "
                            f"input(s) ({', '.join(self.example)}) and {len(self.expected)} output(s)",
                            hint="build this recipe for a target whose converter takes it, e.g. --target cpu")
        (name, x), = self.example.items()
        return name, x, self.expected[0], self.calib[name]


Profiled = tuple[str, str, Any]  # (measured_on device|host, machine name, its DeviceConfig)


def host_device() -> "DeviceConfig":
    """This host's CPU as a DeviceConfig: the cpu card's per-core figures under the host CPU's name.

    Host-proxy rows of other targets (a mobile artifact timed on x86, the ONNX candidates of an
    Ascend build) take their roofline peak and energy-estimate power from here, never from the
    target card's device: host time x device power would describe no machine.
    """
    from edgekd.cards import load_target
    from edgekd.hostinfo import cpu_name

    d = load_target("cpu").device
    return d.model_copy(update={"name": f"{cpu_name()} (this host)"})


def host_proxy(target: "TargetConfig") -> Profiled:
    """A model run on this host's CPU stands in for the device: host figures (peak, power), never
    the target card's -- host CPU time x the device's power would describe no machine."""
    host = host_device()
    return "host", host.name, host


def host_is_device(target: "TargetConfig") -> Profiled:
    """This host is the target device: the card's figures under the host CPU's name."""
    host = host_device()
    return "device", host.name, target.device.model_copy(update={"name": host.name})


def no_teacher_on_device(load_model: Callable[[], Any], example: Any, target: "TargetConfig") -> Any:
    """Families without an accelerator that runs PyTorch: the teacher has no device row."""
    return None


def torch_teacher_row(load_model: Callable[[], Any], example: Any, target: "TargetConfig", device: str, sampler: Any,
                      idle_seconds: float | None = None) -> tuple[str, dict[str, Any]]:
    """The PyTorch teacher timed on torch `device` with `sampler` reading its power counter: the
    (report key, profile row) the families' profile_teacher_on_device hooks return. With
    `idle_seconds` the board's idle power is sampled first and subtracted (as for msit's figures),
    so the per-inference energy is of the same kind as the bundle's."""
    import torch

    from edgekd.runtimes.torch_device import profile_torch_device

    model = load_model()
    p = target.profile
    runs = max(p.min_runs, 100)
    has_counter = sampler.available()
    idle = sampler.idle_watts(idle_seconds) if has_counter and idle_seconds is not None else None
    r = profile_torch_device(model, torch.as_tensor(example), device, runs=runs, warmup=p.warmup_runs,
                             sampler=sampler if has_counter else None)
    energy = r["energy"]
    if energy and idle is not None:
        above = energy["joules_total"] - idle * energy["window_s"]
        energy.update({"joules_per_inference": above / runs, "idle_watts": idle, "joules_above_idle": above})
    if energy is None:
        energy = {"joules_per_inference": None, "method": "estimate-none", "note": f"{sampler.method} counter not available"}
    return f"teacher/fp32-torch-{device}", {
        "latency_ms": r["latency_ms"], "throughput_per_s": r["throughput_per_s"], "energy": energy,
        "peak_rss_bytes": None, "peak_memory_bytes": r["peak_memory_bytes"], "runtime": f"torch-{device}",
        "measured_on": "device", "device": r["device_name"], "flops": None, "roofline": None}


@dataclass(frozen=True)
class TargetFamily:
    name: str                                                         # cpu | cuda | mobile | ascend
    summary: str
    formats: frozenset[str]                                           # artifact formats a card may ask for
    check: Callable[["TargetConfig"], None]                           # raises UserError/ConfigError up front
    availability: Callable[["TargetConfig"], list[Capability]]        # cheap probes, never raise
    required: tuple[str, ...]                                         # capabilities of which one must be present
    # How the family recognises its cards; the registry asks every family and exactly one must
    # answer yes. `claims` says the same in words, for the error when none or several do.
    matches: Callable[["TargetConfig"], bool]
    claims: str
    # None: the ONNX candidates are the shipped artifacts. Otherwise returns (outputs, metrics); a
    # metrics["models"] list holds report rows for the artifacts the target ships.
    convert: Callable[[ConvertJob], tuple[dict[str, str], dict[str, Any]]] | None = None
    # Quantization candidate kinds (edgekd.quantize.candidates.candidate_kind) whose graphs this
    # family's runtime/converter cannot take, each with the reason. Candidates of these kinds are
    # not built for its targets: a recipe's list is filtered (one printed line, report status
    # `unsupported-on-target`), a card or an explicit --set naming one exits 2 before any training.
    cannot_ship: Mapping[str, str] = field(default_factory=dict)
    cannot_ship_hint: str = ""  # what to do instead (e.g. Ascend INT8 goes through AMCT)
    # The tasks (edgekd.tasks names) whose students this family's converter and profiler take; a recipe of
    # another task is refused at pre-flight (exit 2) with `tasks_hint`.
    tasks: frozenset[str] = frozenset({"classification", "text-generation"})
    tasks_hint: str = ""
    # Where the profile stage's runs happen: (measured_on, machine name, its DeviceConfig).
    where_profiled: Callable[["TargetConfig"], Profiled] = host_proxy
    # The same for a model run on this host's CPU whatever the target (the language-model
    # benchmark): the device on the cpu family, a host proxy elsewhere.
    host_cpu_profiled: Callable[["TargetConfig"], Profiled] = host_proxy
    # The PyTorch teacher timed on the target's accelerator (cuda: NVML; ascend: torch_npu with
    # npu-smi), when the device is here: (report key, row). `load_model` is called only then.
    profile_teacher_on_device: Callable[[Callable[[], Any], Any, "TargetConfig"], Any] = no_teacher_on_device
    # The family's name given as --target: () -> (card, overrides, one line to print); None: the
    # name is a card's.
    resolve: Callable[[], tuple[str, dict[str, object], str]] | None = None

    def ready(self, target: "TargetConfig", rows: list[Capability] | None = None) -> tuple[bool, str]:
        """Whether `edgekd build` can produce this target's artifacts here, and why not."""
        rows = rows if rows is not None else self.availability(target)
        usable = [(name, reason) for name, ok, reason in rows if ok and name in self.required]
        if len(usable) == 1 and len(self.required) == 1:
            return True, usable[0][1]
        if usable:
            return True, f"{' and '.join(name for name, _ in usable)} available"
        missing = [reason for name, ok, reason in rows if not ok and name in self.required]
        return False, "; ".join(missing) or f"none of {', '.join(self.required)} was probed"


def has_module(name: str) -> bool:
    """Whether `name` is importable, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing or a broken __spec__: not importable
        return False


def unshippable(family: TargetFamily, names: list[str] | tuple[str, ...]) -> list[dict[str, str]]:
    """[{variant, kind, reason}] for each candidate in `names` whose kind `family` cannot ship, in
    order. ConfigError (exit 2) for an unknown candidate name."""
    from edgekd.quantize.candidates import candidate_kind

    out = []
    for n in names:
        kind = candidate_kind(n)
        if kind in family.cannot_ship:
            out.append({"variant": n, "kind": kind, "reason": family.cannot_ship[kind]})
    return out


def shippable_names(family: TargetFamily) -> list[str]:
    """The registered candidates a target of `family` can ship."""
    from edgekd.quantize.candidates import CANDIDATES, OTHER_KINDS

    kinds = {**{n: c.kind for n, c in CANDIDATES.items()}, **OTHER_KINDS}
    return [n for n, k in kinds.items() if k not in family.cannot_ship]


def check_common(target: "TargetConfig", family: TargetFamily) -> None:
    """Checks every family shares: artifact formats, quantization candidate names, and that the
    card lists no candidate its family cannot ship."""
    bad = [f for f in target.formats if f not in family.formats]
    if bad:
        raise ConfigError(f"target '{target.name}' ({family.name}) cannot produce format(s) {', '.join(bad)}",
                          hint=f"formats of a {family.name} target: {', '.join(sorted(family.formats))}")
    dropped = unshippable(family, target.candidates)
    if dropped:
        d = dropped[0]
        raise ConfigError(f"target '{target.name}' lists candidate {d['variant']}, which a {family.name} target cannot "
                          f"ship: {d['reason']}",
                          hint=f"a {family.name} target ships {', '.join(shippable_names(family))}; remove "
                               f"{', '.join(x['variant'] for x in dropped)} from the card's candidates")


def check_providers(target: "TargetConfig") -> None:
    """Every onnxruntime provider named by the card must be one onnxruntime knows (present or not)."""
    import onnxruntime as ort

    known = ort.get_all_providers()
    for p in target.providers:
        if p not in known:
            import difflib

            close = difflib.get_close_matches(p, known, n=2)
            raise ConfigError(f"target '{target.name}': unknown onnxruntime provider '{p}'",
                              hint=(f"did you mean {' or '.join(close)}? " if close else "")
                              + "e.g. CPUExecutionProvider, CUDAExecutionProvider")
