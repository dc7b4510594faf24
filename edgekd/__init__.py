"""edgekd: distill, quantize, export and profile a student model for an edge target.

Kept light on purpose: heavy SDKs (onnxruntime, nncf, optimum, transformers, openvino,
executorch, torch_npu) are imported inside the functions that use them.
"""
__version__ = "0.1.0"
