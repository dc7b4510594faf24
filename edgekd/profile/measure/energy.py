"""Energy per inference: measured by a power counter when one is present, else a labelled estimate.

Measured methods: `rapl` (Intel/AMD package counters in /sys/class/powercap), `nvml` (NVIDIA GPU
total-energy counter), `npu-smi` (Ascend board power, sampled and integrated). Anything else is an
estimate whose method starts with `estimate-` and is never shown as measured.
"""
from __future__ import annotations

import math
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from edgekd.config import DeviceConfig
from edgekd.errors import StageError, UserError

MEASURED_METHODS = ("rapl", "nvml", "npu-smi")
ESTIMATE_METHOD = "estimate-cpu-time-x-power"
ESTIMATE_ASSUMPTIONS = (
    "joules = process CPU seconds per inference x the target card's active_power_watts per busy core; "
    "no power counter was read, idle and uncore power are ignored, memory/DRAM energy is not modelled"
)


class PowerSampler(Protocol):
    """A power counter: start() before the work, stop() after it returns joules consumed meanwhile."""

    method: str

    def available(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> float: ...


# --------------------------------------------------------------------------- RAPL


class RaplSampler:
    """Sums the package energy counters of /sys/class/powercap/intel-rapl:N (AMD exposes the same).

    Only top-level zones (`intel-rapl:0`, `intel-rapl:1`) are summed: sub-zones such as
    `intel-rapl:0:0` (cores) are already part of their package and would be counted twice.
    """

    method = "rapl"

    def __init__(self, root: Path | str = "/sys/class/powercap") -> None:
        self.root = Path(root)
        self._start: dict[Path, int] = {}

    def zones(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("intel-rapl:*") if re.fullmatch(r"intel-rapl:\d+", p.name)
                      and (p / "energy_uj").is_file())

    def available(self) -> bool:
        zones = self.zones()
        if not zones:
            return False
        try:
            # energy_uj is root-only on most kernels since 2020 (PLATYPUS side channel).
            for z in zones:
                int((z / "energy_uj").read_text().strip())
        except (OSError, ValueError):
            return False
        return True

    def _read(self) -> dict[Path, int]:
        return {z: int((z / "energy_uj").read_text().strip()) for z in self.zones()}

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> float:
        end = self._read()
        total_uj = 0
        for zone, e0 in self._start.items():
            e1 = end.get(zone)
            if e1 is None:
                raise StageError(f"RAPL zone {zone.name} disappeared during the measurement",
                                 hint="re-run; if it persists, disable energy measurement")
            if e1 < e0:
                # The counter wrapped at max_energy_range_uj: add the range back once.
                rng_file = zone / "max_energy_range_uj"
                if not rng_file.is_file():
                    raise StageError(f"RAPL zone {zone.name} wrapped but has no max_energy_range_uj",
                                     hint="measure a shorter window or disable energy measurement")
                e1 += int(rng_file.read_text().strip())
            total_uj += e1 - e0
        return total_uj / 1e6


# --------------------------------------------------------------------------- NVML


class NvmlSampler:
    """NVIDIA GPU energy from nvmlDeviceGetTotalEnergyConsumption (millijoules since driver load).

    The counter updates every 20-100 ms, so measure windows of seconds, not milliseconds.
    """

    method = "nvml"

    def __init__(self, device_index: int = 0) -> None:
        self.device_index = device_index
        self._start_mj = 0
        self._handle: Any = None

    def _nvml(self) -> Any:
        import pynvml  # nvidia-ml-py; optional, imported only when asked for

        pynvml.nvmlInit()
        if self._handle is None:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
        return pynvml

    def available(self) -> bool:
        try:
            nv = self._nvml()
            nv.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except ImportError:
            return False
        except Exception as e:  # pynvml raises NVMLError subclasses for "no driver", "not supported", ...
            if type(e).__name__.startswith("NVMLError"):
                return False
            raise
        return True

    def start(self) -> None:
        nv = self._nvml()
        self._start_mj = int(nv.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def stop(self) -> float:
        nv = self._nvml()
        end = int(nv.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        return (end - self._start_mj) / 1000.0


# --------------------------------------------------------------------------- npu-smi

# npu-smi prints `printf("\t%-30s : %.1f\n", label, watts)`. 310/910-class boards say
# "Power Dissipation(W)", 310P says "NPU Real-time Power(W)". "Rated Power Dissipation(W)" is the
# board's rating, not a reading, and must not match (hence the anchored label).
_NPU_POWER = re.compile(r"^\s*(?:Power Dissipation|NPU Real-time Power)\(W\)\s*:\s*(\S+)\s*$", re.MULTILINE)


def parse_npu_smi_power(text: str) -> float:
    """Watts from the output of `npu-smi info -t power -i ID`."""
    m = _NPU_POWER.search(text)
    if not m:
        raise StageError("npu-smi output has no power reading",
                         hint="expected a line like 'Power Dissipation(W) : 13.4'; run `npu-smi info -t power -i 0`")
    try:
        watts = float(m.group(1))
    except ValueError:
        raise StageError(f"npu-smi reports power as '{m.group(1)}'",
                         hint="this board or container does not expose a power reading") from None
    if not math.isfinite(watts) or watts < 0:
        raise StageError(f"npu-smi reports an invalid power {watts} W", hint="check the device with npu-smi")
    return watts


def integrate_trapezoid(samples: Sequence[tuple[float, float]]) -> float:
    """Joules from (time_s, watts) samples, by the trapezoidal rule."""
    pts = sorted(samples)
    return sum((t1 - t0) * (w0 + w1) / 2.0 for (t0, w0), (t1, w1) in zip(pts, pts[1:]))


class NpuSmiSampler:
    """Polls `npu-smi info -t power -i ID` in a background thread and integrates the power."""

    method = "npu-smi"

    def __init__(self, device_id: int = 0, interval_s: float = 0.1, reader: Callable[[], str] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.device_id = device_id
        self.interval_s = interval_s
        self._reader = reader or self._run_npu_smi
        self._clock = clock
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run_npu_smi(self) -> str:
        out = subprocess.run(["npu-smi", "info", "-t", "power", "-i", str(self.device_id)],
                             capture_output=True, text=True, timeout=10, check=False)
        if out.returncode != 0:
            raise StageError(f"npu-smi failed for device {self.device_id}: {out.stderr.strip()[-200:]}",
                             hint="check the device id with `npu-smi info`")
        return out.stdout

    def available(self) -> bool:
        if shutil.which("npu-smi") is None and self._reader == self._run_npu_smi:
            return False
        try:
            parse_npu_smi_power(self._reader())
        except (StageError, OSError, subprocess.SubprocessError):
            return False
        return True

    def _sample(self) -> None:
        self._samples.append((self._clock(), parse_npu_smi_power(self._reader())))

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                self._sample()
        except BaseException as e:  # handed to stop(), which raises it in the caller's thread
            self._error = e

    def start(self) -> None:
        self._samples = []
        self._error = None
        self._stop.clear()
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="npu-smi-power", daemon=True)
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise StageError(f"npu-smi power sampling failed: {self._error}",
                             hint="run without energy measurement, or check npu-smi") from self._error
        self._sample()
        return integrate_trapezoid(self._samples)

    @property
    def samples(self) -> list[tuple[float, float]]:
        """(time_s, watts) readings of the last start()..stop() window."""
        return list(self._samples)

    def idle_watts(self, seconds: float = 2.0) -> float:
        """Mean board power over `seconds` with nothing of ours running: the baseline to subtract.
        At least two readings are taken, however short `seconds` is."""
        self.start()
        end = self._clock() + max(seconds, 0.0)
        while self._clock() < end and self._error is None:
            time.sleep(min(self.interval_s, 0.05))
        self.stop()
        watts = [w for _, w in self._samples]
        return sum(watts) / len(watts)


SAMPLERS: dict[str, Callable[[], PowerSampler]] = {
    "rapl": RaplSampler,
    "nvml": NvmlSampler,
    "npu-smi": NpuSmiSampler,
}


def pick_sampler(choice: str = "auto", providers: Sequence[str] = ()) -> PowerSampler | None:
    """The counter that sees the device the model runs on, if present.

    `auto` picks by where the work runs: CUDA providers -> nvml, CANN/NPU -> npu-smi, else rapl.
    `none` disables measurement. A named sampler that is absent returns None (the caller estimates).
    """
    if choice == "none":
        return None
    if choice == "auto":
        joined = " ".join(providers).lower()
        choice = "nvml" if "cuda" in joined or "tensorrt" in joined else (
            "npu-smi" if "cann" in joined or "npu" in joined else "rapl")
    if choice not in SAMPLERS:
        raise UserError(f"unknown energy sampler '{choice}'",
                        hint=f"valid: auto, none, {', '.join(SAMPLERS)}")
    sampler = SAMPLERS[choice]()
    return sampler if sampler.available() else None


# --------------------------------------------------------------------------- results


def measured_result(method: str, joules: float, inferences: int, seconds: float) -> dict:
    """The record of a counter measurement over `inferences` runs."""
    return {"method": method, "joules_per_inference": joules / max(inferences, 1), "joules_total": joules,
            "inferences": inferences, "seconds": seconds}


def estimate_energy(cpu_seconds_per_inference: float, device: DeviceConfig) -> dict:
    """A labelled estimate: process CPU seconds per inference x active power per busy core."""
    if not math.isfinite(cpu_seconds_per_inference) or cpu_seconds_per_inference < 0:
        raise StageError(f"invalid CPU time per inference {cpu_seconds_per_inference}",
                         hint="the profiler's CPU time measurement failed")
    return {
        "joules_per_inference": cpu_seconds_per_inference * device.active_power_watts,
        "method": ESTIMATE_METHOD,
        "assumptions": f"{ESTIMATE_ASSUMPTIONS} ({device.active_power_watts} W/core, device '{device.name}')",
    }


def measured_or_estimate(cpu_seconds_per_inference: float, device: DeviceConfig,
                         measured: dict | None = None) -> dict:
    """The measured figure when a counter produced a usable one, else the labelled estimate.

    A measured label is kept only when `measured` names a real counter and holds a positive,
    finite figure; anything else falls back to the estimate, which always says `estimate-...`.
    """
    if measured is not None and measured.get("method") in MEASURED_METHODS:
        j = measured.get("joules_per_inference")
        if isinstance(j, (int, float)) and math.isfinite(j) and j > 0:
            out = dict(measured)
            out["joules_per_inference"] = float(j)
            return out
        est = estimate_energy(cpu_seconds_per_inference, device)
        est["assumptions"] += f"; the {measured['method']} counter gave no usable reading ({j!r})"
        return est
    return estimate_energy(cpu_seconds_per_inference, device)
