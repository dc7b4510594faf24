"""Ascend bundle: static-shape ONNX, an ATC operator lint, and the scripts to convert and time
the model on an Ascend host.

No part of this needs CANN: the bundle is built anywhere; `atc` runs only when it is on PATH.
The operator lint follows how ATC's ONNX parser looks a node up: it builds
`<domain>::<V>::<op_type>` where V is the MODEL's opset_import version for that domain (not the
op's since-version) and asks for a parser registered under exactly that key. The table of
registered keys is the packaged `cann_ops.json` (its `source` and `cann_version` fields say where
each fact comes from). Passing the lint does not guarantee every dtype/shape compiles.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from edgekd.errors import ConfigError, StageError, UserError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnx

    from edgekd.config import AscendConfig, TargetConfig

MANIFEST_SCHEMA_VERSION = 1

# SoC names ATC accepts for --soc_version (the platform_config/<name>.ini files shipped with
# CANN 7–9). A typo here would only surface on the Ascend host, after the bundle was shipped.
KNOWN_SOC_VERSIONS: tuple[str, ...] = (
    "Ascend310",
    "Ascend310P1", "Ascend310P2", "Ascend310P3", "Ascend310P4", "Ascend310P5", "Ascend310P7",
    "Ascend310B1", "Ascend310B2", "Ascend310B3", "Ascend310B4",
    "Ascend910", "Ascend910A", "Ascend910B", "Ascend910ProA", "Ascend910ProB", "Ascend910PremiumA",
    "Ascend910B1", "Ascend910B2", "Ascend910B2C", "Ascend910B3", "Ascend910B4", "Ascend910B4-1",
    "Ascend910_9391", "Ascend910_9392", "Ascend910_9381", "Ascend910_9382", "Ascend910_9372",
    "Ascend910_9362",
)

# ATC --precision_mode values documented for CANN 7–9.
PRECISION_MODES: tuple[str, ...] = (
    "force_fp32", "cube_fp16in_fp32out", "force_fp16", "allow_fp32_to_fp16", "must_keep_origin_dtype",
    "allow_mix_precision", "allow_mix_precision_fp16", "allow_mix_precision_bf16", "allow_fp32_to_bf16",
)

# Modes CANN documents for Atlas A2/A3 products only (bfloat16 and the FP32-output cube).
A2_ONLY_MODES: tuple[str, ...] = ("cube_fp16in_fp32out", "allow_mix_precision_bf16", "allow_fp32_to_bf16")

# ATC registers no standard ONNX op at model opset 19+ (see cann_ops.json general_constraints).
ATC_MAX_STANDARD_OPSET = 18

# ONNX tensor dtypes ATC's parser maps (onnx_util.cc); any other dtype in a constant fails to parse.
_ATC_DTYPES = {"FLOAT", "UINT8", "INT8", "UINT16", "INT16", "INT32", "INT64", "STRING", "BOOL", "FLOAT16",
               "DOUBLE", "UINT32", "UINT64", "COMPLEX64", "COMPLEX128", "BFLOAT16", "FLOAT8E5M2",
               "FLOAT8E4M3FN", "INT4"}

_STANDARD_DOMAINS = ("", "ai.onnx")
# ATC splits --input_shape on ':' ';' ','; the shell must not expand anything either.
_INPUT_NAME_RE = re.compile(r"[A-Za-z0-9_./-]+")
_DYNAMIC_HINT = ("ATC needs a fixed shape: set onnx.dynamic_batch=false (onnx.static_batch=N); dynamic shapes on "
                 "Ascend need -1 dims plus atc --dynamic_batch_size / --dynamic_dims gears, which edgekd does not generate")


# --------------------------------------------------------------------------- op table and lint


@lru_cache(maxsize=1)
def _load_table_cached() -> str:
    return (resources.files("edgekd.targets.ascend") / "cann_ops.json").read_text(encoding="utf-8")


def load_op_table() -> dict[str, Any]:
    """The packaged CANN ONNX operator table (a fresh dict each call; parsed from the cached text)."""
    table = json.loads(_load_table_cached())
    missing = [k for k in ("ops", "custom_domain_ops", "source", "cann_version") if k not in table]
    if missing:
        raise StageError(f"packaged cann_ops.json lacks {', '.join(missing)}",
                         hint="reinstall edgekd; the operator table shipped with it is damaged")
    return table


@dataclass(frozen=True)
class Finding:
    """One node ATC would reject (or one tensor whose dtype it cannot parse)."""

    node: str
    op_type: str
    domain: str
    model_opset: int | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.node or '<unnamed>'} ({self.domain}::{self.op_type}): {self.reason}"


def _opset_map(model: "onnx.ModelProto") -> dict[str, int]:
    out: dict[str, int] = {}
    for imp in model.opset_import:
        out["ai.onnx" if imp.domain in _STANDARD_DOMAINS else imp.domain] = imp.version
    return out


def _iter_nodes(graph: "onnx.GraphProto"):
    """All nodes, including those inside subgraphs (If branches, Loop bodies)."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _iter_nodes(g)


def _iter_initializers(graph: "onnx.GraphProto"):
    import onnx

    yield from graph.initializer
    for node in _iter_nodes(graph):
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:  # Constant's value and friends
                yield attr.t


def _format_opsets(opsets: list[int]) -> str:
    if not opsets:
        return "none"
    if opsets == list(range(opsets[0], opsets[-1] + 1)):
        return f"{opsets[0]}-{opsets[-1]}"
    return ", ".join(str(v) for v in opsets)


def lint(model_path: "Path | str | onnx.ModelProto", table: dict[str, Any] | None = None) -> list[Finding]:
    """Nodes ATC has no parser for at this model's opset. Empty list = every node has one."""
    import onnx

    model = model_path if isinstance(model_path, onnx.ModelProto) else onnx.load(str(model_path), load_external_data=False)
    table = table or load_op_table()
    ops: dict[str, Any] = table["ops"]
    custom: dict[str, Any] = table["custom_domain_ops"]
    opsets = _opset_map(model)
    findings: list[Finding] = []
    for node in _iter_nodes(model.graph):
        domain = "ai.onnx" if node.domain in _STANDARD_DOMAINS else node.domain
        version = opsets.get(domain)
        if domain == "ai.onnx" and node.op_type == "Constant":
            continue  # ATC maps Constant -> Const before any opset-versioned lookup
        if version is None:
            findings.append(Finding(node.name, node.op_type, domain, None,
                                    f"domain '{domain}' has no opset_import entry (ATC E19999)"))
            continue
        if domain == "ai.onnx":
            entry = ops.get(node.op_type)
            if entry is None:
                findings.append(Finding(node.name, node.op_type, domain, version,
                                        f"ATC has no parser for ONNX op {node.op_type} at any opset"))
                continue
            registered = entry["opsets"]
        else:
            entry = custom.get(f"{domain}::{node.op_type}")
            if entry is None:
                findings.append(Finding(node.name, node.op_type, domain, version,
                                        f"ATC has no parser for custom-domain op {domain}::{node.op_type}"))
                continue
            registered = entry["opsets"]
            if registered is None:  # registered under a non-standard key; ATC's lookup cannot reach it
                findings.append(Finding(node.name, node.op_type, domain, version,
                                        "ATC registers this op without an opset in its key, so the parser lookup "
                                        f"'{domain}::{version}::{node.op_type}' does not reach it"))
                continue
        if registered != "any" and version not in registered:
            findings.append(Finding(node.name, node.op_type, domain, version,
                                    f"ATC registers {node.op_type} for model opsets {_format_opsets(list(registered))}, "
                                    f"not {version} (lookup '{domain}::{version}::{node.op_type}' fails, E16002)"))
    for tensor in _iter_initializers(model.graph):
        dtype = onnx.TensorProto.DataType.Name(tensor.data_type)
        if dtype not in _ATC_DTYPES:
            findings.append(Finding(tensor.name, "Tensor", "ai.onnx", opsets.get("ai.onnx"),
                                    f"ATC's ONNX parser cannot read dtype {dtype}"))
    return findings


# --------------------------------------------------------------------------- target checks


def check_target(target: "TargetConfig") -> "AscendConfig":
    """Raise UserError/ConfigError for an Ascend card ATC would reject (before any work is done);
    return its [ascend] section."""
    if target.ascend is None:
        raise ConfigError(f"target '{target.name}' has no [ascend] section",
                          hint="an Ascend card needs [ascend] soc_version (e.g. Ascend310P3); see targets/ascend-310p.toml")
    soc = target.ascend.soc_version
    if soc not in KNOWN_SOC_VERSIONS:
        close = difflib.get_close_matches(soc, KNOWN_SOC_VERSIONS, n=3, cutoff=0.6)
        hint = (f"did you mean {' or '.join(close)}? " if close else "") + f"known: {', '.join(KNOWN_SOC_VERSIONS)}"
        raise UserError(f"unknown Ascend soc_version '{soc}'", hint=hint)
    mode = target.ascend.precision_mode
    if mode not in PRECISION_MODES:
        raise UserError(f"unknown ATC precision_mode '{mode}'", hint=f"valid: {', '.join(PRECISION_MODES)}")
    if mode in A2_ONLY_MODES and not soc.startswith(("Ascend910B", "Ascend910_93")):
        raise UserError(f"precision_mode '{mode}' is not available on {soc}",
                        hint=f"{mode} exists on Atlas A2/A3 SoCs (Ascend910B*, Ascend910_93*) only; on {soc} use "
                             "allow_fp32_to_fp16, force_fp16 or must_keep_origin_dtype")
    if target.onnx.dynamic_batch:
        raise UserError(f"target '{target.name}' asks for a dynamic batch, but no dims are given for ATC", hint=_DYNAMIC_HINT)
    if target.onnx.opset_max > ATC_MAX_STANDARD_OPSET:
        raise UserError(f"target '{target.name}' allows opset up to {target.onnx.opset_max}; ATC registers no standard op "
                        f"above opset {ATC_MAX_STANDARD_OPSET}", hint="set onnx.opset_max to 15 (11–15 is accepted by every recent CANN)")
    return target.ascend


# --------------------------------------------------------------------------- static shapes


def _dims(value_info: "onnx.ValueInfoProto") -> list[int | str | None]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _strip_unused_domains(model: "onnx.ModelProto") -> None:
    """ORT writes an opset_import for every domain it knows; keep only the ones nodes use."""
    used = {"ai.onnx" if n.domain in _STANDARD_DOMAINS else n.domain for n in _iter_nodes(model.graph)}
    keep = [imp for imp in model.opset_import
            if ("ai.onnx" if imp.domain in _STANDARD_DOMAINS else imp.domain) in used or imp.domain in _STANDARD_DOMAINS]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _fold_constants(model: "onnx.ModelProto", workdir: Path) -> tuple["onnx.ModelProto", str]:
    """Constant folding through onnxruntime's basic (EP-independent) optimizer, written to a file.
    Returns the folded model, or the input model and why folding was not kept."""
    import onnx
    from edgekd.runtimes.ort import session

    src, dst = workdir / "unfolded.onnx", workdir / "folded.onnx"
    onnx.save(model, str(src))
    try:
        session(src, optimization="basic", optimized_model_path=dst)
    except Exception as e:  # onnxruntime raises its own exception types; the model is still valid unfolded
        return model, f"not folded: onnxruntime could not load the model ({type(e).__name__}: {str(e).splitlines()[0]})"
    folded = onnx.load(str(dst))
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in _iter_nodes(folded.graph) if n.domain not in _STANDARD_DOMAINS}
                     - {f"{n.domain}::{n.op_type}" for n in _iter_nodes(model.graph) if n.domain not in _STANDARD_DOMAINS})
    if foreign:
        return model, f"not folded: onnxruntime introduced non-standard ops {', '.join(foreign)}"
    _strip_unused_domains(folded)
    return folded, "folded with onnxruntime ORT_ENABLE_BASIC"


def prepare_static(model_path: Path | str, out_path: Path | str, input_shapes: dict[str, list[int]],
                   opset_range: tuple[int, int] = (11, 15)) -> dict[str, Any]:
    """Write a copy of the model with every input dim fixed, shapes inferred and constants folded.

    Raises UserError when a shape is missing, dynamic (-1/0/None) or of the wrong rank, when the
    model's opset lies outside `opset_range`, or when any tensor ends up with a zero dim.
    """
    import onnx

    model = onnx.load(str(model_path))
    opset = _opset_map(model).get("ai.onnx")
    lo, hi = opset_range
    if opset is None or not lo <= opset <= hi:
        raise UserError(f"model opset {opset} is outside the target's range {lo}-{hi}",
                        hint=f"re-export with --set onnx.opset={min(max(13, lo), hi)}")
    init_names = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in init_names]
    names = [i.name for i in graph_inputs]
    unknown = sorted(set(input_shapes) - set(names))
    if unknown:
        raise UserError(f"input shape given for unknown input(s) {', '.join(unknown)}", hint=f"the model's inputs: {', '.join(names)}")
    for inp in graph_inputs:
        current = _dims(inp)
        shape = input_shapes.get(inp.name)
        if shape is None:
            if current and all(isinstance(d, int) and d > 0 for d in current):
                continue  # already static
            raise UserError(f"input '{inp.name}' has dynamic dims {current} and no fixed shape was given", hint=_DYNAMIC_HINT)
        shape = list(shape)
        bad = [d for d in shape if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 0]
        if not bad and 0 in shape:
            raise UserError(f"input '{inp.name}': shape {shape} has a zero-sized dim; ATC rejects zero dims",
                            hint="give every input dim a positive size")
        if bad:
            raise UserError(f"input '{inp.name}': shape {shape} is not static (every dim must be a positive integer)",
                            hint=_DYNAMIC_HINT)
        if current and len(current) != len(shape):
            raise UserError(f"input '{inp.name}' has rank {len(current)}, the given shape {shape} has rank {len(shape)}",
                            hint="give one dim per model input axis")
        fixed = [d for d, s in zip(current, shape) if isinstance(d, int) and d > 0 and d != s]
        if fixed:
            raise UserError(f"input '{inp.name}': shape {shape} conflicts with the model's fixed dims {current}",
                            hint="keep the model's fixed dims; only dynamic ones may be set")
        tshape = inp.type.tensor_type.shape
        del tshape.dim[:]
        for d in shape:
            tshape.dim.add().dim_value = int(d)
    # Output and intermediate shapes were recorded with symbolic dims; drop them and re-infer.
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    nodes_before = sum(1 for _ in _iter_nodes(model.graph))
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as e:  # onnx raises InferenceError and friends; the message is what the user needs
        raise UserError(f"shape inference failed with the given input shapes: {str(e).splitlines()[0]}",
                        hint="check the input shapes against what the model expects") from None
    with tempfile.TemporaryDirectory(prefix="edgekd-ascend-") as tmp:
        model, folding = _fold_constants(model, Path(tmp))
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    foreign = sorted({n.domain for n in _iter_nodes(model.graph) if n.domain.startswith("com.microsoft")})
    if foreign:  # defence in depth: _fold_constants refuses these, a source model might carry them
        raise UserError(f"model uses onnxruntime-only domains {', '.join(foreign)}", hint="ATC reads standard ONNX only")
    outputs: dict[str, list[Any]] = {}
    # ATC exempts constants (an empty Resize roi is common); every computed tensor must be non-empty.
    consts = {i.name for i in model.graph.initializer} | {
        o for n in _iter_nodes(model.graph) if n.op_type == "Constant" for o in n.output}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims = _dims(vi)
        if vi.name not in consts and any(d == 0 for d in dims):
            raise UserError(f"tensor '{vi.name}' has a zero-sized dim {dims}; ATC rejects zero dims",
                            hint="change the input shape or the model so no tensor is empty")
    for out in model.graph.output:
        dims = _dims(out)
        if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
            raise UserError(f"output '{out.name}' shape {dims} is not static after shape inference",
                            hint="a data-dependent output shape cannot be compiled statically by ATC")
        outputs[out.name] = dims
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise StageError(f"the static model does not pass the ONNX checker: {str(e).splitlines()[0]}",
                         hint="report this with the source model; the static rewrite produced an invalid graph") from None
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return {"opset": opset, "inputs": {i.name: _dims(i) for i in model.graph.input if i.name not in init_names},
            "outputs": outputs, "folding": folding, "nodes_before": nodes_before,
            "nodes_after": sum(1 for _ in _iter_nodes(model.graph))}


# --------------------------------------------------------------------------- bundle


def _sha256(path: Path) -> str:
    from edgekd.fsio import sha256_file

    return sha256_file(path)


def _write_script(path: Path, body: str) -> None:
    path.write_text(body, encoding="utf-8")
    path.chmod(0o755)


def _convert_sh(input_name: str, shape: list[int], soc: str, mode: str, keep_dtype: bool = False) -> str:
    # The name was checked against _INPUT_NAME_RE, so double quotes are enough for the shell.
    shape_arg = f'--input_shape="{input_name}:{",".join(str(d) for d in shape)}"'
    # --keep_dtype has no effect under must_keep_origin_dtype (CANN ATC docs), so it is not passed then.
    keep = " --keep_dtype=keep_dtype.cfg" if keep_dtype and mode != "must_keep_origin_dtype" else ""
    return f"""#!/usr/bin/env bash
# Convert model.onnx to an Ascend offline model (model.om) with CANN's ATC.
# Needs the CANN toolkit environment: source /usr/local/Ascend/ascend-toolkit/set_env.sh
# Another precision mode: PRECISION_MODE=must_keep_origin_dtype ./convert.sh
set -euo pipefail
cd "$(dirname "$0")"
atc --model="${{MODEL:-model.onnx}}" --framework=5 --output="${{OUT:-model}}" --soc_version={soc} {shape_arg} --precision_mode="${{PRECISION_MODE:-{mode}}}"{keep} "$@"
"""


def _benchmark_sh(loop: int, warmup: int, device_id: int) -> str:
    return f"""#!/usr/bin/env bash
# Time model.om on the NPU with msit (pip install msit; msit install benchmark).
# Power while it runs, in another shell: npu-smi info -t power -i <card id>  ("Power Dissipation(W)")
set -euo pipefail
cd "$(dirname "$0")"
DEVICE_ID="${{DEVICE_ID:-{device_id}}}"
msit benchmark --om-model model.om --loop {loop} --warmup-count {warmup} --device "$DEVICE_ID" "$@"
"""


def _check_py(atol: float, rtol: float) -> str:
    return f'''"""Compare the outputs msit wrote (NPY) with the expected outputs in manifest.json, for EVERY
sample in the manifest. Needs numpy only.

usage: python check_outputs.py OUTPUT_DIR   (after: msit benchmark --om-model model.om
       --input inputs --output OUTPUT_DIR --outfmt NPY)
msit names each output after its input file: sample_3.bin -> sample_3_0.npy (first output).
Exit 0 when every sample is within tolerance, 1 when one differs or has no output file.
"""
import json
import sys
from pathlib import Path

import numpy as np

ATOL, RTOL = {atol!r}, {rtol!r}
here = Path(__file__).resolve().parent
manifest = json.loads((here / "manifest.json").read_text())
found = sorted(Path(sys.argv[1]).rglob("*.npy"))
if not found:
    sys.exit(f"no .npy files under {{sys.argv[1]}}")
by_name = {{p.name: p for p in found}}
rows, ok_all = [], True
for i, sample in enumerate(manifest["samples"]):
    stem = Path(sample["input_file"]).stem
    path = by_name.get(f"{{stem}}_0.npy") or by_name.get(f"{{stem}}.npy")
    if path is None and len(found) == len(manifest["samples"]):
        path = found[i]  # unnamed outputs: msit kept the input order
    if path is None:
        rows.append({{"sample": stem, "ok": False, "error": "no output file"}})
        ok_all = False
        continue
    expected = np.asarray(sample["expected"], dtype=np.float32)
    got = np.load(path).astype(np.float32).reshape(expected.shape)
    diff = float(np.abs(got - expected).max())
    ok = bool(np.all(np.abs(got - expected) <= ATOL + RTOL * np.abs(expected)))
    top1 = float((got.argmax(-1) == expected.argmax(-1)).mean()) if expected.ndim > 1 else None
    rows.append({{"sample": stem, "file": str(path), "max_abs_diff": diff, "top1_agreement": top1, "ok": ok}})
    ok_all = ok_all and ok
print(json.dumps({{"samples": rows, "compared": sum(1 for r in rows if "file" in r), "atol": ATOL, "rtol": RTOL,
                  "ok": ok_all}}, indent=1))
sys.exit(0 if ok_all else 1)
'''


def _readme(soc: str, input_name: str, shape: list[int], atc_status: str, dtype: str = "float32",
            mode: str = "allow_fp32_to_fp16", precision: dict[str, Any] | None = None, amct: bool = False) -> str:
    prec = ""
    if precision and precision.get("fp16_accuracy") is not None:
        prec = (f"\nHost FP16 preflight ({mode}, simulated on onnxruntime, test split): FP32 {precision['fp32_accuracy']:.2%}, "
                f"FP16 {precision['fp16_accuracy']:.2%}")
        if precision.get("keep_fp32"):
            prec += (f", with {len(precision['keep_fp32'])} layer(s) kept in FP32 (keep_dtype.cfg) "
                     f"{precision['accuracy_with_keep']:.2%}")
        prec += ".\nIf accuracy on the NPU still falls short: PRECISION_MODE=must_keep_origin_dtype ./convert.sh\n"
    amct_txt = ("""
INT8 (AMCT, on a CANN host only; needs amct_onnx from the CANN toolkit):
  python3 amct/calibrate.py           # calibrates on amct/calibration.npy, writes amct/out/model_deploy_model.onnx
  MODEL=amct/out/model_deploy_model.onnx OUT=model_int8 ./convert.sh   # atc on the quantized model
  Check its accuracy on the NPU before shipping it: edgekd measured none of it on this host.
""" if amct else "")
    return f"""edgekd Ascend bundle for {soc}
================================

model.onnx        static-shape ONNX (input {input_name}: {shape} {dtype}), opset and operators linted for ATC
convert.sh        atc ... -> model.om           (needs the CANN toolkit; ATC here: {atc_status})
                  precision_mode {mode}{"; keep_dtype.cfg keeps the listed layers in FP32" if precision and precision.get("keep_fp32") else ""}
benchmark.sh      msit benchmark on model.om    (needs the NPU driver + msit)
inputs/*.bin      sample inputs, raw {dtype}, batch as in the input shape
check_outputs.py  compares the device output of EVERY sample with the expected outputs in manifest.json
manifest.json     sha256 of every file, shapes, SoC, opset, lint result, sample inputs/outputs, FP16 preflight
{prec}{amct_txt}
On the Ascend host:
  source /usr/local/Ascend/ascend-toolkit/set_env.sh
  python3 -c "import json;[print(h+'  '+f) for f,h in json.load(open('manifest.json'))['files'].items()]" | sha256sum -c -
  ./convert.sh                                   # writes model.om
  DEVICE_ID=0 ./benchmark.sh                     # latency/throughput on the NPU
  msit benchmark --om-model model.om --input inputs --output out --outfmt NPY
  python3 check_outputs.py out                   # parity of every sample's NPU result with the host result
"""


def run_atc(bundle: Path, timeout_s: float, oms: tuple[str, ...] = ("model.om",)) -> dict[str, Any]:
    """The bundle's convert.sh (the `atc` command per graph) when atc is on PATH; `oms`: the files it must
    write. The log is kept in the bundle (atc.log); a failure is a status, raised after the bundle is written."""
    atc = shutil.which("atc")
    if atc is None:
        return {"status": "not run", "reason": "atc not found: not run"}
    log = bundle / "atc.log"
    try:
        with log.open("w", encoding="utf-8") as f:
            proc = subprocess.run(["bash", str(bundle / "convert.sh")], cwd=bundle, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"atc timed out after {timeout_s:.0f} s", "atc": atc, "log": "atc.log"}
    missing = [om for om in oms if not (bundle / om).is_file()]
    if proc.returncode != 0 or missing:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        return {"status": "failed", "reason": f"atc exited {proc.returncode}" + (f", no {', '.join(missing)}" if missing else ""),
                "atc": atc, "log": "atc.log", "log_tail": tail}
    return {"status": "ok", "atc": atc, "log": "atc.log", "om": oms[0] if len(oms) == 1 else list(oms)}


_AMCT_SCRIPT = '''"""INT8 post-training quantization of model.onnx with AMCT (Ascend Model Compression Toolkit).

Runs ONLY on a host with the CANN toolkit (amct_onnx is part of it, not on PyPI). Calibrates on
amct/calibration.npy (samples of the training split, written by edgekd, in the model's input
layout and dtype), then writes amct/out/model_deploy_model.onnx (for atc) and
amct/out/model_fake_quant_model.onnx (for accuracy simulation on onnxruntime).
API: amct_onnx create_quant_config / quantize_model / save_model (CANN AMCT ONNX docs).
"""
from pathlib import Path

import numpy as np
import onnxruntime as ort

import amct_onnx as amct

HERE = Path(__file__).resolve().parent
MODEL = str(HERE.parent / "model.onnx")
INPUT_NAME = {input_name!r}
BATCH = {batch}
OUT = HERE / "out"
OUT.mkdir(exist_ok=True)
calib = np.load(HERE / "calibration.npy")
batches = [calib[i:i + BATCH] for i in range(0, len(calib) - BATCH + 1, BATCH)]
config = str(OUT / "config.json")
record = str(OUT / "record.txt")
modified = str(OUT / "modified_model.onnx")
amct.create_quant_config(config_file=config, model_file=MODEL, skip_layers=None, batch_num=len(batches),
                         activation_offset=True)
amct.quantize_model(config_file=config, model_file=MODEL, modified_onnx_file=modified, record_file=record)
# The calibration pass: run the modified model on every batch with AMCT's session options.
session = ort.InferenceSession(modified, amct.AMCT_SO)
for b in batches:
    session.run(None, {{INPUT_NAME: b}})
amct.save_model(modified_onnx_file=modified, record_file=record, save_path=str(OUT / "model"))
print("wrote", OUT / "model_deploy_model.onnx")
'''


def _write_amct(bundle: Path, calib: np.ndarray, input_name: str, shape: list[int]) -> dict[str, Any]:
    """amct/calibrate.py + amct/calibration.npy: INT8 through AMCT on a CANN host (never run here)."""
    d = bundle / "amct"
    d.mkdir()
    np.save(d / "calibration.npy", np.ascontiguousarray(calib))
    (d / "calibrate.py").write_text(_AMCT_SCRIPT.format(input_name=input_name, batch=int(shape[0])), encoding="utf-8")
    return {"script": "amct/calibrate.py", "calibration": "amct/calibration.npy", "samples": int(len(calib)),
            "status": "not run", "reason": "AMCT needs the CANN toolkit; run amct/calibrate.py on the Ascend host"}



@contextlib.contextmanager
def bundle_folder(parent: Path, prefix: str) -> Iterator[Path]:
    """A private temp folder in `parent`, published whole as `parent/ascend` (replacing an earlier bundle) when
    the block finishes, removed on any error: a bundle is never half-written under its final name."""
    final = parent / "ascend"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        final.chmod(0o755)  # mkdtemp made it private; the bundle is meant to be copied and shared
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def raise_if_atc_failed(atc: dict[str, Any], soc: str, final: Path) -> None:
    """An ATC failure is a StageError raised after the bundle (its atc.log and manifest) was written."""
    if atc["status"] == "failed":
        raise StageError(f"atc failed for {soc}: {atc['reason']}",
                         hint=f"see {final / 'atc.log'}; the bundle is kept for inspection")

def write_bundle(model_path: Path | str, out_dir: Path | str, target: "TargetConfig", input_name: str,
                 input_shape: list[int], sample_inputs: np.ndarray, expected_outputs: np.ndarray,
                 allow_unsupported: bool = False, max_samples: int = 4, atc_timeout_s: float = 1800.0, *,
                 evaluation: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, budget_points: float = 0.5,
                 calib: np.ndarray | None = None, log: Any = None) -> dict[str, Any]:
    """Write `out_dir/ascend/` (model.onnx, convert.sh, benchmark.sh, manifest.json, README.txt, ...).

    The static model is checked against `expected_outputs` on onnxruntime with the card's parity
    tolerance (StageError on mismatch). Lint findings raise UserError unless `allow_unsupported`.
    With `evaluation` = (x_test, y_test, x_val) the static model's test accuracy is measured and
    the card's precision mode is simulated in FP16 on the host (edgekd.targets.ascend.precision);
    layers responsible for a drop past `budget_points` go to keep_dtype.cfg. With `calib` an AMCT
    INT8 calibration script and batch are added (run only on a CANN host).
    When `atc` is on PATH the bundle is converted to model.om; an ATC failure raises StageError
    after the bundle (with atc.log and the manifest) is written. Returns the manifest.
    """
    ascend = check_target(target)
    soc = ascend.soc_version
    shape, x, y, n = _bundle_inputs(input_name, input_shape, sample_inputs, expected_outputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "ascend"
    with bundle_folder(out_dir, ".ascend-") as tmp:
        prep, findings = _static_linted(model_path, tmp, target, input_name, shape, allow_unsupported)
        # The folded static model must still compute what the reference computed.
        from edgekd.export.onnx import check_parity
        from edgekd.runtimes.ort import run_onnx

        parity = check_parity(y[:n].astype(np.float32), run_onnx(tmp / "model.onnx", x[:n]), target.parity.atol,
                              target.parity.rtol, what=f"static ONNX for {soc}", output_name=next(iter(prep["outputs"])))
        precision = _precision_preflight(tmp, ascend.precision_mode, x.dtype, evaluation, budget_points, log)
        n_cal = (min(len(calib), 32 * shape[0]) // shape[0]) * shape[0] if calib is not None else 0
        amct = _write_amct(tmp, np.asarray(calib[:n_cal], dtype=x.dtype), input_name, shape) if n_cal else None
        samples = _write_samples(tmp, x, y, n, shape[0], max_samples)
        atc = _write_scripts_and_convert(tmp, target, input_name, shape, str(x.dtype), precision, amct is not None,
                                         atc_timeout_s)
        manifest = _manifest(tmp, target, input_name, shape, str(x.dtype), prep, findings, allow_unsupported, parity,
                             atc, precision, amct, samples)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    raise_if_atc_failed(atc, soc, final)
    return manifest


def _bundle_inputs(input_name: str, input_shape: list[int], sample_inputs: np.ndarray,
                   expected_outputs: np.ndarray) -> tuple[list[int], np.ndarray, np.ndarray, int]:
    """(static shape, samples in the model's dtype, expected outputs, usable sample count); UserError
    for an input name atc cannot take or samples that do not fit the shape."""
    if not _INPUT_NAME_RE.fullmatch(input_name):
        raise UserError(f"input name {input_name!r} cannot be passed to atc --input_shape",
                        hint="export with an input name made of letters, digits, '_', '.', '/' or '-'")
    shape = [int(d) for d in input_shape]
    # Token-id models take int64 ids; everything else is fed float32 (ATC reads the ONNX input dtype).
    raw = np.asarray(sample_inputs)
    x = raw.astype(np.int64) if np.issubdtype(raw.dtype, np.integer) else raw.astype(np.float32)
    y = np.asarray(expected_outputs)
    if x.ndim != len(shape) or list(x.shape[1:]) != shape[1:]:
        raise UserError(f"sample inputs have shape {list(x.shape)}, the model input is {shape}",
                        hint="pass samples as (N, *input_shape[1:])")
    batch = shape[0]
    n = (min(len(x), len(y)) // batch) * batch
    if len(x) != len(y) or n == 0:
        raise UserError(f"need at least {batch} sample(s) with as many expected outputs (got {len(x)} inputs, {len(y)} outputs)",
                        hint="pass the reference model's outputs for the same samples")
    return shape, x, y, n


def _static_linted(model_path: Path | str, tmp: Path, target: "TargetConfig", input_name: str, shape: list[int],
                   allow_unsupported: bool) -> tuple[dict[str, Any], list[Finding]]:
    """tmp/model.onnx with static shapes, and its lint findings (UserError unless allowed)."""
    prep = prepare_static(model_path, tmp / "model.onnx", {input_name: shape},
                          (target.onnx.opset_min, target.onnx.opset_max))
    findings = lint(tmp / "model.onnx")
    if findings and not allow_unsupported:
        listed = "; ".join(str(f) for f in findings[:5]) + (f"; +{len(findings) - 5} more" if len(findings) > 5 else "")
        raise UserError(f"{len(findings)} node(s) ATC cannot convert for {target.ascend.soc_version}: {listed}",
                        hint=f"re-export at an opset in {target.onnx.opset_min}-{target.onnx.opset_max} or replace "
                             "these ops; allow_unsupported writes the bundle anyway")
    return prep, findings


def _precision_preflight(tmp: Path, mode: str, dtype: np.dtype, evaluation: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                         budget_points: float, log: Any) -> dict[str, Any] | None:
    """The card's precision mode simulated in FP16 on the host (None without `evaluation`); the
    layers it keeps in FP32 go to keep_dtype.cfg."""
    if evaluation is None:
        return None
    from edgekd.targets.ascend.precision import KEEP_DTYPE_FILE, fp16_preflight, keep_dtype_text

    x_test, y_test, x_val = evaluation
    # Token-id inputs stay int64: only the float operators after the embedding are rounded.
    precision = fp16_preflight(tmp / "model.onnx", mode, np.asarray(x_test, dtype), np.asarray(y_test),
                               np.asarray(x_val, dtype), budget_points, log=log)
    if precision.get("keep_fp32"):
        (tmp / KEEP_DTYPE_FILE).write_text(keep_dtype_text(precision["keep_fp32"]), encoding="utf-8")
    return precision


def _write_samples(tmp: Path, x: np.ndarray, y: np.ndarray, n: int, batch: int, max_samples: int) -> list[dict[str, Any]]:
    """inputs/sample_<i>.bin (raw, one batch each) and their expected outputs for the manifest."""
    (tmp / "inputs").mkdir()
    samples = []
    for i, start in enumerate(range(0, min(n, max_samples * batch), batch)):
        xi = np.ascontiguousarray(x[start:start + batch])
        xi.tofile(tmp / "inputs" / f"sample_{i}.bin")
        samples.append({"input_file": f"inputs/sample_{i}.bin", "input": xi.tolist(),
                        "expected": np.asarray(y[start:start + batch], dtype=np.float32).tolist()})
    return samples


def _write_scripts_and_convert(tmp: Path, target: "TargetConfig", input_name: str, shape: list[int], dtype: str,
                               precision: dict[str, Any] | None, amct: bool, atc_timeout_s: float) -> dict[str, Any]:
    """convert.sh, benchmark.sh, check_outputs.py; atc when it is on PATH; README.txt. Returns atc's record."""
    ascend = target.ascend
    soc, mode = ascend.soc_version, ascend.precision_mode
    _write_script(tmp / "convert.sh", _convert_sh(input_name, shape, soc, mode,
                                                  keep_dtype=bool(precision and precision.get("keep_fp32"))))
    _write_script(tmp / "benchmark.sh", _benchmark_sh(ascend.loop, ascend.warmup, ascend.device_id))
    (tmp / "check_outputs.py").write_text(_check_py(target.parity.atol, target.parity.rtol), encoding="utf-8")
    atc = run_atc(tmp, atc_timeout_s)
    (tmp / "README.txt").write_text(_readme(soc, input_name, shape, atc["status"], dtype, mode, precision, amct),
                                    encoding="utf-8")
    return atc


def _manifest(tmp: Path, target: "TargetConfig", input_name: str, shape: list[int], dtype: str, prep: dict[str, Any],
              findings: list[Finding], allow_unsupported: bool, parity: dict[str, Any], atc: dict[str, Any],
              precision: dict[str, Any] | None, amct: dict[str, Any] | None, samples: list[dict[str, Any]]) -> dict[str, Any]:
    from edgekd import __version__

    table = load_op_table()
    accuracy = precision["fp32_accuracy"] if precision is not None else None
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "kind": "ascend-bundle",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgekd_version": __version__,
        "target": target.name,
        "soc_version": target.ascend.soc_version,
        "precision_mode": target.ascend.precision_mode,
        "opset": prep["opset"],
        "input": {"name": input_name, "shape": shape, "dtype": dtype},
        "outputs": [{"name": k, "shape": v} for k, v in prep["outputs"].items()],
        "prepare": {"folding": prep["folding"], "nodes_before": prep["nodes_before"], "nodes_after": prep["nodes_after"]},
        "lint": {"ok": not findings, "allowed_unsupported": bool(findings) and allow_unsupported,
                 "findings": [f.to_dict() for f in findings],
                 "table_cann_version": table["cann_version"],
                 "note": "passing the lint does not guarantee every dtype/shape compiles"},
        "host_parity": {k: parity[k] for k in ("ok", "max_abs_diff", "atol", "rtol", "samples")},
        "atc": atc,
        "accuracy": {"static_onnx_fp32": accuracy, "split": "test", "measured_on": "host", "runtime": "onnxruntime"}
        if accuracy is not None else None,
        "precision_preflight": precision,
        "amct": amct,
        "commands": {"convert": "./convert.sh", "benchmark": "./benchmark.sh"},
        "samples": samples,
        "files": {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()},
    }
