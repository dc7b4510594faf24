"""Export a torch model to ONNX and check the export against the torch model on real inputs."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekd.errors import StageError


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int,
                dynamic_batch: bool = True, input_name: str = "input", output_name: str = "logits",
                dynamic_sequence: bool = False) -> Path:
    """Export with the TorchScript exporter (dynamo=False): it covers opsets 11–20, which the
    Ascend range (11–15) needs, and writes one self-contained file (no external data)."""
    model.eval()
    tmp = path.with_name(path.name + ".tmp")
    dynamic_axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    if dynamic_axes and dynamic_sequence:  # token ids [batch, seq]
        dynamic_axes[input_name][1] = "sequence"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(tmp), opset_version=opset, input_names=[input_name],
                          output_names=[output_name], dynamic_axes=dynamic_axes, do_constant_folding=True,
                          dynamo=False)
    model.eval()  # the TorchScript exporter leaves the module in train mode
    import onnx

    m = onnx.load(str(tmp))
    onnx.checker.check_model(m)
    os.replace(tmp, path)
    return path


def check_parity(reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float,
                 what: str, output_name: str = "logits") -> dict[str, Any]:
    """Compare two output arrays; beyond `atol + rtol*|ref|` raise StageError with the max diff."""
    if reference.shape != candidate.shape:
        raise StageError(f"{what}: output '{output_name}' has shape {candidate.shape}, expected {reference.shape}",
                         hint="the export changed the model's output; check the exporter warnings with --debug")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    max_diff = float(diff.max()) if diff.size else 0.0
    excess = diff - (atol + rtol * np.abs(reference))
    ok = bool((excess <= 0).all())
    result = {"ok": ok, "max_abs_diff": max_diff, "atol": atol, "rtol": rtol, "samples": int(reference.shape[0]),
              "top1_agreement": float((reference.argmax(-1) == candidate.argmax(-1)).mean()) if reference.ndim > 1 else None}
    if not ok:
        raise StageError(f"{what}: output '{output_name}' differs from the reference by up to {max_diff:.3g} "
                         f"(tolerance atol={atol:g}, rtol={rtol:g})",
                         hint="the exported graph does not match the PyTorch model; raise parity.atol only if the difference is expected")
    return result
