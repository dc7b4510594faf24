"""Quantization-aware distillation: the "int8-qat" candidate.

PTQ (edgekd.quantize.candidates) only picks scales; when a layer's activation range is dominated
by a few large values, INT8 rounds the rest to a handful of levels and accuracy falls. QAT
quantizes the trained FP32 student with NNCF, then fine-tunes it *through* the fake quantizers
(weights adapt to the grid, NNCF's scales are learned too) with the recipe's distillation loss.

Which NNCF path, and why (measured with nncf 3.4 / torch 2.13 on this project's 2-core machine):
- torch.fx (`torch.export(...).module()` -> `nncf.quantize`) needs no C++ extension, but its
  result is an inference graph: weights folded into int8 constants, quantize/dequantize ops with
  no gradient, no parameters at all. It cannot be fine-tuned, so it is not used here.
- classic torch (`nncf.quantize` on the nn.Module) inserts trainable fake quantizers. It needs
  NNCF's CPU extension, compiled on first use (~60-100 s here, cached under TORCH_EXTENSIONS_DIR,
  default ~/.cache/torch_extensions; a cached load takes < 1 s). This is the path used
  (`path_used: "torch"`); the model is then `nncf.strip`ped to torch FakeQuantize modules and
  exported with the TorchScript exporter (dynamo=False, opsets 13-20, one self-contained file).

The exported QDQ graph keeps FP32 weights behind QuantizeLinear; `_fold_weight_quantize` stores
them as INT8 initializers feeding DequantizeLinear (what ORT's own QDQ quantizer writes), so the
file is ~4x smaller and computes the same values.

nncf, onnx and onnxruntime are imported inside functions (house rule: `import edgekd` stays light).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.errors import DataError, EdgekdError, StageError

log = logging.getLogger(__name__)

NAME = "int8-qat"
# Per-channel QuantizeLinear (NNCF quantizes weights per output channel) exists from opset 13.
MIN_OPSET = 13
# QAT keeps the recipe's logit terms (edgekd.distill.options.LOGIT_LOSSES). Feature/attention/relation
# terms would need projectors trained from scratch here, pulling a converged student away from its
# features at a stage meant only to adapt it to the INT8 grid.
# ORT's INT8 kernels and torch's fake quantizer may round a value that sits on a level boundary
# differently; a real export defect changes far more predictions than this.
MIN_TOP1_AGREEMENT = 0.95


@dataclass(frozen=True)
class _FineTuneCfg:
    """The fields edgekd.distill.trainer.train reads, with QAT's epochs and learning rate."""

    epochs: int
    lr: float
    batch_size: int
    seed: int
    weight_decay: float
    grad_clip: float | None
    label_smoothing: float = 0.0
    augment: bool = False
    patience: int | None = None


def _finetune_cfg(train_cfg: Any, epochs: int | None, lr_scale: float) -> _FineTuneCfg:
    base_epochs = int(getattr(train_cfg, "epochs", 3))
    n = int(epochs) if epochs is not None else max(1, min(3, base_epochs))
    if n < 1:
        raise StageError(f"{NAME}: fine-tuning needs at least 1 epoch, got {n}", hint="set qat epochs >= 1")
    if not lr_scale > 0:
        raise StageError(f"{NAME}: lr_scale must be > 0, got {lr_scale}", hint="use e.g. 0.1 (lr/10)")
    return _FineTuneCfg(
        epochs=n, lr=float(train_cfg.lr) * lr_scale, batch_size=int(train_cfg.batch_size),
        seed=int(getattr(train_cfg, "seed", 0)), weight_decay=float(getattr(train_cfg, "weight_decay", 0.0)),
        grad_clip=getattr(train_cfg, "grad_clip", 1.0),
        augment=bool(getattr(train_cfg, "augment", False)),
    )


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF prints progress bars and INFO tables; a stage's output belongs in its logs, not stdout."""
    nncf_log = logging.getLogger("nncf")
    old = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        nncf_log.setLevel(old)


def _logit_losses(losses: list[Any]) -> tuple[list[Any], list[str]]:
    """The recipe's logit terms (and the kinds dropped); soft+hard label when none is left."""
    from edgekd.config import LossConfig
    from edgekd.distill.options import LOGIT_LOSSES

    kept: list[Any] = []
    dropped: list[str] = []
    for cfg in losses:
        kind = cfg.kind if hasattr(cfg, "kind") else dict(cfg).get("kind")
        if kind in LOGIT_LOSSES:
            kept.append(cfg)
        else:
            dropped.append(str(kind))
    if not kept:
        kept = [LossConfig(kind="soft_label", weight=0.9, temperature=4.0), LossConfig(kind="hard_label", weight=0.1)]
    return kept, dropped


def _torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    from edgekd.distill.trainer import accuracy

    return accuracy(model, x, y) if len(x) else float("nan")


def _fold_weight_quantize(model) -> int:
    """Replace QuantizeLinear(constant FP32 weight) with the INT8 constant it computes.

    The TorchScript exporter writes weights as FP32 initializers + QuantizeLinear + DequantizeLinear;
    ORT folds that at load time, but the file stays FP32-sized. Rounding follows the ONNX spec
    (round half to even, saturate). Returns how many weights were folded.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    producers = {o: n for n in graph.node for o in n.output}

    def value(name: str) -> np.ndarray | None:
        # The TorchScript exporter deduplicates equal initializers behind Identity nodes.
        while name not in inits and name in producers and producers[name].op_type == "Identity":
            name = producers[name].input[0]
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = consts.get(name)
        if node is not None:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    folded, drop = 0, []
    for n in graph.node:
        if n.op_type != "QuantizeLinear" or len(n.input) < 3:
            continue
        w, scale, zp = (value(i) for i in n.input[:3])
        if w is None or scale is None or zp is None or w.dtype != np.float32:
            continue  # an activation quantizer, or something this pass does not understand
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * w.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(w / scale.astype(np.float32)) + zp.astype(np.int32), info.min, info.max).astype(zp.dtype)
        graph.initializer.append(numpy_helper.from_array(q, n.output[0]))
        drop.append(n)
        folded += 1
    for n in drop:
        graph.node.remove(n)
    # Weights, Constant and Identity nodes no longer read by anything (the FP32 copies) go; repeat
    # because removing an Identity can orphan what it read.
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in ("Constant", "Identity") and n.output[0] not in used]
        for node in dead:
            graph.node.remove(node)
        stale = [i for i in graph.initializer if i.name not in used]
        for init in stale:
            graph.initializer.remove(init)
        if not dead and not stale:
            break
    return folded


def _fold_batchnorm(model: nn.Module, notes: list[str]) -> int:
    """Fold each BatchNorm that directly follows a Conv/Linear into it, in place (eval statistics).

    Why: NNCF places activation quantizers after BN+ReLU, so an unfolded graph reads DQ -> Conv ->
    BN -> ReLU -> Q and onnxruntime cannot form QLinearConv (it needs Q right after the conv): the
    convs would run in FP32 on dequantized weights. Folding first also quantizes the weights that
    are deployed (conv * BN scale), the usual QAT recipe with frozen BN statistics. Module paths
    stay the same (the BN becomes nn.Identity). Returns how many BNs were folded.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if not any(isinstance(m, bn_types) for m in model.modules()):
        return 0
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - untraceable forward: keep BN, say so
        notes.append(f"BatchNorm not folded (torch.fx cannot trace the student: {_one_line(e)}); "
                     "onnxruntime may run its convolutions in FP32")
        return 0
    mods = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs: list[tuple[str, str]] = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods[node.target], bn_types) or len(node.args) != 1:
            continue
        prev = node.args[0]
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        # A module called twice cannot be rewritten for one call site only.
        if calls[prev.target] == 1 and calls[node.target] == 1 and \
                isinstance(mods[prev.target], (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            pairs.append((prev.target, node.target))
    for lin_name, bn_name in pairs:
        lin, bn = model.get_submodule(lin_name), model.get_submodule(bn_name)
        fused = fuse_linear_bn_eval(lin, bn) if isinstance(lin, nn.Linear) else fuse_conv_bn_eval(lin, bn)
        model.set_submodule(lin_name, fused)
        model.set_submodule(bn_name, nn.Identity())
    left = sum(isinstance(m, bn_types) for m in model.modules())
    if left:
        notes.append(f"{left} BatchNorm layer(s) not folded (not directly after a Conv/Linear)")
    return len(pairs)


def _export(model: nn.Module, example: torch.Tensor, out_path: Path, opset: int, dynamic_batch: bool,
            x_check: np.ndarray) -> dict[str, Any]:
    """Strip NNCF's quantizers, export QDQ ONNX, fold weights to INT8, check it in ORT, write atomically."""
    import nncf
    import onnx

    from edgekd.export.onnx import export_onnx
    from edgekd.runtimes.ort import run_onnx

    with _quiet():
        stripped = nncf.strip(model, do_copy=True, example_input=example)
    stripped.eval()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as td:
        raw = Path(td) / "qat_raw.onnx"
        with _quiet():
            export_onnx(stripped, example, raw, opset=opset, dynamic_batch=dynamic_batch)
        m = onnx.load(str(raw))
        folded = _fold_weight_quantize(m)
        onnx.checker.check_model(m)
        tmp = Path(td) / "qat.onnx"
        onnx.save(m, str(tmp))
        # Parity: the ORT INT8 graph against the stripped torch fake-quant model it came from.
        with torch.inference_mode():
            ref = stripped(torch.as_tensor(x_check)).float().numpy()
        got = run_onnx(tmp, x_check).reshape(ref.shape)
        agree = float(np.mean(ref.argmax(1) == got.argmax(1)))
        parity = {"max_abs_diff": float(np.max(np.abs(ref - got))), "logit_scale": float(np.max(np.abs(ref))),
                  "top1_agreement": agree, "samples": len(x_check)}
        if agree < MIN_TOP1_AGREEMENT:
            raise StageError(f"{NAME}: the ONNX export agrees with the torch QAT model on only {agree:.1%} of "
                             f"top-1 predictions (max abs diff {parity['max_abs_diff']:.3g})",
                             hint="the QDQ export changed the model; rerun with --debug and check the exporter")
        os.replace(tmp, out_path)
    ops = sorted({n.op_type for n in m.graph.node})
    return {"folded_weights": folded, "parity": parity, "ops": ops}


def _check_inputs(opset: int, calib: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> None:
    """Refuse an opset without per-channel QuantizeLinear, an empty calibration set, a bad validation split."""
    if opset < MIN_OPSET:
        raise StageError(f"{NAME}: opset {opset} is too old for per-channel QuantizeLinear (needs >= {MIN_OPSET})",
                         hint=f"use a target with opset >= {MIN_OPSET}, or leave {NAME} out of its candidates")
    if calib is None or not isinstance(calib, np.ndarray) or calib.ndim == 0 or len(calib) == 0:
        raise DataError(f"{NAME}: empty calibration set", hint="pass real samples (quantize.calibration_samples)")
    if len(x_val) == 0 or len(x_val) != len(y_val):
        raise DataError(f"{NAME}: validation needs matching non-empty inputs and labels, "
                        f"got {len(x_val)} inputs, {len(y_val)} labels", hint="check the validation split")


def _import_nncf() -> Any:
    """nncf, imported here (a heavy SDK); its absence fails this candidate with a one-line reason."""
    # Without this NNCF gives its C++ extension 60 s to compile; here that takes 60-100 s.
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
    try:
        import nncf
    except ImportError as e:
        raise StageError(f"{NAME}: nncf is not importable ({_one_line(e)})",
                         hint="install nncf>=3.4,<3.5 or drop int8-qat from the candidates") from None
    return nncf


def _prepare_fp32(student: nn.Module, teacher: nn.Module | None, calib: np.ndarray,
                  notes: list[str]) -> tuple[nn.Module, nn.Module, int, torch.Tensor]:
    """A BN-folded eval copy of the student, the frozen teacher, and the calibration tensor it accepts.

    Returns (fp32, teacher, folded BatchNorm count, calibration tensor). The teacher, when not
    given, is a copy of the student taken before BN folding.
    """
    fp32 = copy.deepcopy(student).eval()  # the caller's student stays untouched
    frozen_teacher = teacher if teacher is not None else copy.deepcopy(fp32)
    folded_bn = _fold_batchnorm(fp32, notes)
    calib_t = torch.as_tensor(np.ascontiguousarray(calib), dtype=torch.float32)
    try:  # NNCF's own error for a wrongly shaped calibration set names no shape
        with torch.inference_mode():
            fp32(calib_t[:1])
    except RuntimeError as e:
        raise DataError(f"{NAME}: calibration data of shape {list(calib_t.shape)} does not fit the student "
                        f"({_one_line(e)})",
                        hint="calibration samples must be preprocessed like the model's inputs") from None
    return fp32, frozen_teacher, folded_bn, calib_t


def _nncf_quantize(nncf: Any, fp32: nn.Module, calib_t: torch.Tensor, bs: int) -> tuple[nn.Module, float]:
    """PTQ of a copy of `fp32` with NNCF (trainable fake quantizers), in eval mode; also its seconds."""
    batches = [calib_t[i:i + bs] for i in range(0, len(calib_t), bs)]
    # NNCF compiles its CPU extension on first use (60-100 s on 2 cores), then loads it from cache.
    log.info("%s: nncf.quantize (the first use on this machine compiles NNCF's CPU extension)", NAME)
    q0 = time.perf_counter()
    try:
        with _quiet():
            qmodel = nncf.quantize(copy.deepcopy(fp32), nncf.Dataset(batches), subset_size=len(batches))
    except StageError:
        raise
    except Exception as e:  # noqa: BLE001 - any NNCF failure fails this candidate, with the reason
        hint = ("NNCF's C++ extension may still be compiling: set NNCF_EXTENSION_LOAD_TIMEOUT=0"
                if "Timeout" in type(e).__name__ else "rerun with --debug for NNCF's traceback")
        raise StageError(f"{NAME}: nncf.quantize failed ({_one_line(e)})", hint=hint) from e
    quantize_s = time.perf_counter() - q0
    qmodel.eval()
    return qmodel, quantize_s


def _finetune(qmodel: nn.Module, teacher: nn.Module, kept_losses: list[Any], data: tuple[np.ndarray, ...],
              ft_cfg: _FineTuneCfg, acc_ptq: float, progress: Any, checkpoint: Path | None) -> tuple[Any, str, float]:
    """Distill through the fake quantizers; load the best validation epoch, or the PTQ weights if none beats them.

    `data` is (x_train, y_train, x_val, y_val). Returns (the trainer's result, "qat" or "ptq" for
    the weights kept, fine-tuning seconds); `qmodel` is left in eval mode with the kept weights.
    """
    from edgekd.distill.losses import build_losses
    from edgekd.distill.trainer import train

    x_train, y_train, x_val, y_val = data
    ptq_state = {k: v.detach().clone() for k, v in qmodel.state_dict().items()}
    loss_set = build_losses(kept_losses, qmodel, teacher, torch.as_tensor(x_train[:2]))
    f0 = time.perf_counter()
    try:
        result = train(qmodel, x_train, y_train, x_val, y_val, ft_cfg, teacher=teacher, loss_set=loss_set,
                       progress=progress, description=f"qat {NAME}", checkpoint=checkpoint)
    except EdgekdError:  # StageError, or UserError for a checkpoint that is refused
        raise
    except Exception as e:  # noqa: BLE001 - a fine-tuning crash fails this candidate, with the reason
        raise StageError(f"{NAME}: fine-tuning the quantized model failed ({_one_line(e)})",
                         hint="rerun with --debug; a model NNCF cannot train through needs int8-qdq instead") from e
    finetune_s = time.perf_counter() - f0
    # Best on validation, with the PTQ weights as "epoch 0": fine-tuning must not make it worse.
    kept = "qat" if result.best_val_accuracy > acc_ptq else "ptq"
    qmodel.load_state_dict(result.best_state if kept == "qat" else ptq_state)
    qmodel.eval()
    return result, kept, finetune_s


def _export_checked(qmodel: nn.Module, example: torch.Tensor, out_path: Path, opset: int, dynamic_batch: bool,
                    x_val: np.ndarray) -> tuple[dict[str, Any], float]:
    """`_export` with its parity check on up to 512 validation samples; any exporter crash is a StageError."""
    e0 = time.perf_counter()
    x_check = np.ascontiguousarray(x_val[:512]).astype(np.float32, copy=False)
    try:
        exported = _export(qmodel, example, out_path, opset, dynamic_batch, x_check)
    except StageError:
        raise
    except Exception as e:  # noqa: BLE001 - an export failure fails this candidate, with the reason
        raise StageError(f"{NAME}: exporting the QAT model to ONNX failed ({_one_line(e)})",
                         hint="rerun with --debug for the exporter's traceback") from e
    return exported, time.perf_counter() - e0


def _settings(ft_cfg: _FineTuneCfg, lr_scale: float, calibration_samples: int, bs: int, kept_losses: list[Any],
              dropped: list[str], teacher_given: bool, opset: int, dynamic_batch: bool,
              folded_bn: int) -> dict[str, Any]:
    """The candidate's `settings` record: how it was quantized, fine-tuned and exported."""
    return {
        "nncf_path": "torch", "preset": "performance", "calibration_samples": calibration_samples,
        "calibration_batch_size": bs, "epochs": ft_cfg.epochs, "lr": ft_cfg.lr, "lr_scale": lr_scale,
        "batch_size": ft_cfg.batch_size, "seed": ft_cfg.seed,
        "losses": [c.model_dump() if hasattr(c, "model_dump") else dict(c) for c in kept_losses],
        "dropped_losses": dropped, "teacher": "given" if teacher_given else "fp32-student",
        "opset": opset, "dynamic_batch": dynamic_batch, "format": "QDQ", "folded_batchnorm": folded_bn,
    }


def qat_candidate(student: nn.Module, teacher: nn.Module | None, x_train: np.ndarray, y_train: np.ndarray,
                  x_val: np.ndarray, y_val: np.ndarray, calib: np.ndarray, out_path: Path, *,
                  losses: list[Any], train_cfg: Any, opset: int = 17, dynamic_batch: bool = True,
                  progress: Any = None, epochs: int | None = None, lr_scale: float = 0.1,
                  calibration_batch_size: int = 32, checkpoint: Path | None = None) -> dict[str, Any]:
    """Quantize `student` with NNCF, distill it through its fake quantizers, export INT8 QDQ ONNX.

    `teacher` (frozen) feeds the soft-label term; when None, a frozen copy of the FP32 student is
    the teacher (self-distillation: the quantized model learns to match its own FP32 outputs).
    Fine-tuning runs `epochs` (default min(3, train_cfg.epochs)) at `train_cfg.lr * lr_scale`
    through edgekd.distill.trainer.train; the best validation epoch is kept, or the PTQ weights if
    no epoch beats them. `out_path` is written atomically and checked in onnxruntime.
    `checkpoint`: the fine-tuning's per-epoch checkpoint (the classifier trainer's): a killed run
    resumes from its last finished epoch and ends where an uninterrupted run would. Calibration is
    deterministic, so the quantizer layout rebuilt on resume is the one the checkpoint was saved from.
    Returns {name, path, size_bytes, settings, val_accuracy_fp32, val_accuracy_before_qat (PTQ, torch
    fake-quant), val_accuracy_after (the ONNX file in ORT), val_accuracy (= after), epochs, seconds,
    path_used, ...}. Any failure raises StageError (exit 4) with a one-line reason.
    """
    t0 = time.perf_counter()
    out_path = Path(out_path)
    _check_inputs(opset, calib, x_val, y_val)
    ft_cfg = _finetune_cfg(train_cfg, epochs, lr_scale)
    nncf = _import_nncf()

    notes = ["torch.fx path not used: nncf.quantize on a torch.export graph folds weights into int8 "
             "constants with no trainable parameters, so it cannot be fine-tuned"]
    fp32, frozen_teacher, folded_bn, calib_t = _prepare_fp32(student, teacher, calib, notes)
    acc_fp32 = _torch_accuracy(fp32, x_val, y_val)

    bs = max(1, int(calibration_batch_size))
    qmodel, quantize_s = _nncf_quantize(nncf, fp32, calib_t, bs)
    acc_ptq = _torch_accuracy(qmodel, x_val, y_val)

    kept_losses, dropped = _logit_losses(losses)
    result, kept, finetune_s = _finetune(qmodel, frozen_teacher, kept_losses, (x_train, y_train, x_val, y_val),
                                         ft_cfg, acc_ptq, progress, checkpoint)
    acc_torch = _torch_accuracy(qmodel, x_val, y_val)

    exported, export_s = _export_checked(qmodel, calib_t[:1], out_path, opset, dynamic_batch, x_val)

    from edgekd.runtimes.ort import accuracy

    acc_after = accuracy(out_path, np.asarray(x_val, dtype=np.float32), np.asarray(y_val))
    log.info("%s: fp32 %.4f, ptq %.4f, qat %.4f (ORT); quantize %.1fs (includes NNCF's extension compile on "
             "first use), fine-tune %.1fs, export %.1fs", NAME, acc_fp32, acc_ptq, acc_after, quantize_s, finetune_s,
             export_s)
    settings = _settings(ft_cfg, lr_scale, int(len(calib_t)), bs, kept_losses, dropped, teacher is not None,
                         opset, dynamic_batch, folded_bn)
    return {
        "name": NAME, "path": str(out_path), "size_bytes": out_path.stat().st_size, "settings": settings,
        "val_accuracy_fp32": acc_fp32, "val_accuracy_before_qat": acc_ptq, "val_accuracy_after_torch": acc_torch,
        "val_accuracy_after": acc_after, "val_accuracy": acc_after, "kept": kept,
        "epochs": ft_cfg.epochs, "best_epoch": result.best_epoch if kept == "qat" else 0,
        "history": result.history, "parity": exported["parity"], "folded_weights": exported["folded_weights"],
        "timings": {"quantize_s": quantize_s, "finetune_s": finetune_s, "export_s": export_s},
        "seconds": time.perf_counter() - t0, "path_used": "torch",
        "notes": notes,
    }
