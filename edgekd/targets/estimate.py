"""Labelled on-device estimates from a target card's figures, shared by the families whose device
is absent on the build host (mobile, ascend). Never a measurement: method "estimate-roofline"."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgekd.config import DeviceConfig


def roofline_estimate(flops: float, weight_bytes: float, io_bytes: float, device: "DeviceConfig",
                      precision: str) -> dict[str, Any]:
    """On-device latency/energy from the card's spec figures: max(compute, memory) time x power.

    An estimate, never a measurement: the figures come from the target card, not from a device.
    """
    bytes_moved = float(weight_bytes + io_bytes)
    t_compute = flops / (device.peak_gflops * 1e9)
    t_memory = bytes_moved / (device.mem_bandwidth_gbs * 1e9)
    latency_s = max(t_compute, t_memory)
    assumptions = [
        f"compute roof {device.peak_gflops:g} GFLOP/s and memory roof {device.mem_bandwidth_gbs:g} GB/s from the "
        f"target card ({device.name})",
        "FLOPs = 2 x MACs of Conv/Gemm/MatMul at batch 1; element-wise ops, pooling and softmax not counted",
        "DRAM traffic = weights read once + input and output; intermediate activations assumed cache-resident",
        "no kernel launch, framework or cache-miss overhead: a lower bound on latency",
        f"energy = latency x {device.active_power_watts:g} W (one busy core, card figure); idle power not included",
    ]
    if precision == "int8":
        assumptions.append("int8 arithmetic assumed at the FP32 peak (the card gives no int8 peak)")
    return {"method": "estimate-roofline", "measured": False, "device": device.name,
            "latency_ms": latency_s * 1e3, "bound": "compute" if t_compute >= t_memory else "memory",
            "flops": float(flops), "bytes_moved": bytes_moved,
            "energy": {"joules_per_inference": latency_s * device.active_power_watts, "method": "estimate-roofline"},
            "assumptions": assumptions}
