"""The target registry: one module per family (cpu, cuda, mobile, ascend), listed in one table.

A card's family follows from its runtime and providers. `check` runs every up-front check of the
card's family before any stage (the pipeline's pre-flight), so a bad soc_version, precision mode,
opset, format or provider exits 2 within seconds, not after training.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from edgekd.targets.base import Capability, ConvertJob, TargetFamily

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgekd.config import TargetConfig

__all__ = ["Capability", "ConvertJob", "TargetFamily", "FAMILY_MODULES", "family", "family_name", "check",
           "availability", "build_ready", "split_candidates", "dropped_line"]

# The one explicit table: family name -> module defining FAMILY (modules import nothing heavy).
FAMILY_MODULES = {"cpu": "edgekd.targets.cpu", "cuda": "edgekd.targets.cuda", "mobile": "edgekd.targets.mobile",
                  "ascend": "edgekd.targets.ascend"}


def family_name(target: "TargetConfig") -> str:
    if target.runtime == "ascend":
        return "ascend"
    if target.runtime == "executorch":
        return "mobile"
    if target.runtime == "torch" or "CUDAExecutionProvider" in target.providers:
        return "cuda"
    return "cpu"


def family(target: "TargetConfig") -> TargetFamily:
    import importlib

    return importlib.import_module(FAMILY_MODULES[family_name(target)]).FAMILY


def check(target: "TargetConfig") -> None:
    """Every up-front check of the card's family; raises UserError/ConfigError (exit 2)."""
    family(target).check(target)


def availability(target: "TargetConfig") -> list[Capability]:
    """(capability, available, reason) rows for `target` on this host; never raises for a missing SDK."""
    return family(target).availability(target)


def build_ready(target: "TargetConfig", rows: list[Capability] | None = None) -> tuple[bool, str]:
    return family(target).ready(target, rows)


def split_candidates(target: "TargetConfig", names: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """(the candidates in `names` a build for `target` makes, [{variant, kind, reason}] for those
    its family cannot ship), order kept. ConfigError for an unknown name."""
    from edgekd.targets.base import unshippable

    dropped = unshippable(family(target), names)
    out = {d["variant"] for d in dropped}
    return [n for n in names if n not in out], dropped


def dropped_line(target: "TargetConfig", dropped: list[dict[str, str]], kept: list[str]) -> str:
    """One line: which candidates are not built for `target` and why (grouped by reason), what is."""
    by_reason: dict[str, list[str]] = {}
    for d in dropped:
        by_reason.setdefault(d["reason"], []).append(d["variant"])
    why = "; ".join(f"{', '.join(v)}: {r}" for r, v in by_reason.items())
    return f"target {target.name}: not building {', '.join(d['variant'] for d in dropped)} ({why}); building {', '.join(kept)}"


# --------------------------------------------------------------------------- family names as targets

FAMILY_DEFAULT_CARDS = {"ascend": "ascend-310p", "cuda": "cuda", "mobile": "mobile"}


def _visible_gpu() -> str | None:
    """Name of the first NVIDIA GPU nvidia-smi lists, without importing torch or pynvml."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20, check=False).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0].strip() if out else None


def _attached_phone() -> str | None:
    import shutil
    import subprocess

    adb = shutil.which("adb")
    if adb is None:
        return None
    try:
        lines = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=20).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return None
    serials = [ln.split()[0] for ln in lines if len(ln.split()) >= 2 and ln.split()[1] == "device"]
    return serials[0] if serials else None


def resolve(ref: str) -> tuple[str, dict[str, object], str | None]:
    """A family name given as --target (ascend, cuda, mobile) -> (card, overrides, one line to print).

    ascend: the SoC `npu-smi info` reports (its card, soc_version set to the chip), else ascend-310p.
    cuda: the visible GPU's name on the cuda card, else the card as shipped. mobile: says whether a
    phone is attached. Any other name is a card name or path, returned unchanged.
    """
    if ref not in FAMILY_DEFAULT_CARDS:
        return ref, {}, None
    card = FAMILY_DEFAULT_CARDS[ref]
    if ref == "ascend":
        from edgekd.targets.ascend.device import detect_ascend_soc

        soc, how = detect_ascend_soc()
        if soc is None:
            return card, {}, f"--target ascend: no Ascend NPU here ({how}); building for {card} (Ascend310P3)"
        card = "ascend-910b" if soc.startswith("Ascend910") else card
        return card, {"target.ascend.soc_version": soc}, f"--target ascend: {how}; card {card}, soc_version {soc}"
    if ref == "cuda":
        gpu = _visible_gpu()
        if gpu is None:
            return card, {}, "--target cuda: no NVIDIA GPU visible (nvidia-smi); using the cuda card (H100 figures)"
        return card, {"target.device.name": f"{gpu} (visible GPU; roofline figures of the cuda card)"}, \
            f"--target cuda: {gpu} visible; cuda card"
    phone = _attached_phone()
    if phone is None:
        return card, {}, "--target mobile: no phone attached (adb); on-device figures are estimates of the mobile card"
    return card, {}, f"--target mobile: phone {phone} attached; time the bundle on it with edgekd profile BUILD --adb {phone}"
