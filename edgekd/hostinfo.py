"""One reader of what CPU this is: model name and the ISA flags that decide INT8 vs FP32 speed
(AVX2, AVX-512, VNNI, AMX). Standard library only, so every layer (runtimes, profile, report) can use it."""
from __future__ import annotations

import os
import platform
from typing import Any

# /proc/cpuinfo flag names; "amx" is reported when the tile unit (amx_tile) is present.
_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_info(cpuinfo_text: str | None = None) -> dict[str, Any]:
    """{"model", "arch", "logical_cpus", "flags": {avx2, avx512f, avx512_vnni, amx, ...}}.

    `cpuinfo_text` is for tests (a recorded /proc/cpuinfo); by default the host's is read. Off Linux
    the flags are unknown (None), never guessed.
    """
    text = cpuinfo_text
    if text is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            text = ""
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and model is None and value.strip():
            model = value.strip()
        elif key in ("flags", "Features") and flags is None:
            flags = set(value.split())
    info: dict[str, Any] = {"model": model or platform.processor() or platform.machine(),
                            "arch": platform.machine(), "logical_cpus": os.cpu_count()}
    if flags is None:
        info["flags"] = {name: None for name in ("avx2", "avx512f", "avx512_vnni", "amx")}
    else:
        info["flags"] = {name: name in flags for name in _FLAGS if name != "amx_tile"}
        info["flags"]["amx"] = "amx_tile" in flags
    return info


def cpu_name() -> str:
    return str(cpu_info()["model"])
