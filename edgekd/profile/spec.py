"""What one profiling worker process is asked to time, typed.

`ProfileSettings` is how a model is timed: the target card's [profile] table, its providers, and
the machine whose power turns CPU time into an energy estimate. `ProfileSpec` adds which model
(`python -m edgekd.profile.worker`). `GenerationSettings` / `GenerationSpec` are the same for the
text-generation benchmark (`python -m edgekd.llm.bench`), whose unit is one generated token.

The parent validates a spec, writes it as JSON and the worker validates it again before it loads
anything: a misspelt or mistyped field is an error (exit 2), never a silently used default. The
settings a profile stage builds from its cards are also what its cache key hashes.
"""
from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError

from edgekd.config import DeviceConfig, ModelRef, Strict
from edgekd.errors import UserError

Energy = Literal["auto", "none", "rapl", "nvml", "npu-smi"]  # "auto": the counter of the device that runs
S = TypeVar("S", bound=Strict)


class ProfileSettings(Strict):
    threads: int = Field(1, ge=1)
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"], description="onnxruntime providers")
    warmup_runs: int = Field(50, ge=0)
    warmup_seconds: float = Field(1.0, ge=0)
    min_runs: int = Field(1000, ge=1)
    min_seconds: float = Field(3.0, ge=0)  # the card's default (edgekd.config.ProfileConfig)
    max_seconds: float = Field(60.0, gt=0, description="stop a timing loop after this long, even below min_runs")
    batch_sweep: list[int] = Field(default_factory=lambda: [1, 8, 32, 64])
    throughput_batch: int = Field(64, ge=1)
    throughput_seconds: float | None = Field(None, gt=0, description="per batch size; default: see per_batch_seconds")
    seed: int = Field(0, description="seed of the random inputs when there is no input_file")
    energy: Energy = "auto"
    device: DeviceConfig | None = Field(None, description="adds an `energy` figure: measured, or a labelled estimate")

    @classmethod
    def from_card(cls, target: Any, device: DeviceConfig | None, seed: int = 0) -> "ProfileSettings":
        """The settings of a target card's [profile] table and providers. `device` is the machine
        that runs the profile (for a mobile/Ascend card that is this host, not the card's device)."""
        p = target.profile
        return cls(threads=p.threads, providers=list(target.providers), warmup_runs=p.warmup_runs,
                   warmup_seconds=p.warmup_seconds, min_runs=p.min_runs, min_seconds=p.min_seconds,
                   max_seconds=p.max_seconds, batch_sweep=list(p.batch_sweep), throughput_batch=p.throughput_batch,
                   device=device, seed=seed)

    def per_batch_seconds(self) -> float:
        """Timed seconds per throughput batch size."""
        if self.throughput_seconds is not None:
            return float(self.throughput_seconds)
        return min(2.0, max(0.2, self.min_seconds / 5))

    def sweep(self) -> list[int]:
        """The batch sizes timed for throughput: the sweep plus the throughput batch, ascending."""
        return sorted(set(self.batch_sweep) | {self.throughput_batch})


class ProfileSpec(ProfileSettings):
    """One model (or the host's sgemm peak) for `python -m edgekd.profile.worker SPEC_JSON OUT_JSON`."""

    kind: Literal["onnx", "torch", "sgemm"] = Field(description="sgemm: the host's FP32 peak at `threads`")
    path: str | None = Field(None, description="the ONNX file or the torch state_dict")
    name: str | None = Field(None, description="the result's name (default: the file name)")
    input_shape: list[int] | None = Field(None, description="batch 1; onnx: default from the graph when static")
    input_name: str | None = Field(None, description="onnx: default the first input")
    input_dtype: str | None = Field(None, description="torch: numpy dtype of the input, default float32")
    input_file: str | None = Field(None, description=".npy [N, ...] of real samples, cycled; else seeded random")
    arch: str | None = Field(None, description="torch: zoo architecture built with kwargs")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    model_ref: ModelRef | None = Field(None, description="torch: any model source of a card (instead of arch)")
    seconds: float = Field(0.5, gt=0, description="sgemm: calibration length")

    def with_model(self, **fields: Any) -> "ProfileSpec":
        """This spec for another model (validated)."""
        return type(self).model_validate({**self.model_dump(), **fields})

    @property
    def display_name(self) -> str:
        from pathlib import Path

        return str(self.name or Path(str(self.path or "model")).name)


class GenerationSettings(Strict):
    """How the text-generation benchmark times a model; the report's `profile_settings`."""

    threads: int = Field(1, ge=1)
    prompts: int = Field(4, ge=1, description="held-out prompts timed per repeat")
    new_tokens: int = Field(32, ge=2, description="tokens every model decodes per prompt (stop tokens ignored)")
    repeats: int = Field(3, ge=1, description="passes over the prompts after one warm-up generation")
    device: DeviceConfig = Field(description="the target card's device (reported, not used to time)")
    profiled_on: Literal["device", "host"] = Field(description="host: this host stands in for the target's device")
    profile_device: DeviceConfig = Field(description="the machine that runs the benchmark: its power turns CPU "
                                                     "time into energy per token")
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"],
                                 description="onnxruntime providers of the ONNX models (the target's when it runs here)")
    torch_device: Literal["cpu", "cuda"] = Field("cpu", description="where a PyTorch model (the teacher) decodes")

    @classmethod
    def from_card(cls, target: Any, generate: Any, profiled_on: str, profile_device: DeviceConfig) -> "GenerationSettings":
        # on the device (the cuda target on a GPU host) the models run as the target runs them: its onnxruntime
        # providers, the teacher on the GPU; a host proxy runs on this CPU
        on_gpu = profiled_on == "device" and "CUDAExecutionProvider" in (target.providers or [])
        return cls(threads=target.profile.threads, prompts=generate.profile_prompts,
                   new_tokens=generate.profile_new_tokens, repeats=generate.profile_repeats, device=target.device,
                   profiled_on=profiled_on, profile_device=profile_device,
                   providers=list(target.providers) if on_gpu else ["CPUExecutionProvider"],
                   torch_device="cuda" if on_gpu else "cpu")


class GenerationSpec(Strict):
    """One causal LM for `python -m edgekd.llm.bench SPEC_JSON OUT_JSON`."""

    kind: Literal["torch", "onnx", "pte"] = Field(
        description="torch: a Hugging Face folder; onnx: a KV-cache ONNX; pte: a KV-cache ExecuTorch program")
    path: str
    name: str | None = None
    prompt_ids: list[list[int]] = Field(min_length=1, description="token ids of each prompt")
    settings: GenerationSettings
    energy: Energy = "auto"

    @property
    def display_name(self) -> str:
        from pathlib import Path

        return str(self.name or Path(self.path).name)


def load_spec(cls: type[S], data: Any) -> S:
    """`data` (a spec, a mapping or JSON text) as a validated `cls`; a bad field is a UserError."""
    if isinstance(data, cls):
        return data
    try:
        return cls.model_validate_json(data) if isinstance(data, (str, bytes)) else cls.model_validate(dict(data))
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise UserError(f"invalid {cls.__name__}: {where}: {err['msg']}{more}",
                        hint=f"valid fields: {', '.join(cls.model_fields)}") from None
