"""Quantization: candidate makers (registry `CANDIDATES`), accuracy checks, and the measured
selection. Importing this package loads no heavy SDK; onnx/onnxruntime/nncf load on first use."""
from edgekd.quantize.candidates import (
    CANDIDATES,
    NotApplicable,
    accuracy_aware,
    make_candidate,
    validate_candidate_names,
)
from edgekd.quantize.select import select

__all__ = ["CANDIDATES", "NotApplicable", "accuracy_aware", "make_candidate", "select",
           "validate_candidate_names"]
