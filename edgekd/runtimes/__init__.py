"""Runtimes edgekd runs models on, one module each; heavy SDKs are imported inside functions.

- `edgekd.runtimes.ort`: onnxruntime sessions (the card's threads and providers), batched runs,
  accuracy, the input spec of a model. Every other module asks it for sessions.
- `edgekd.runtimes.openvino_rt`: OpenVINO CPU inference and parity against a reference.
- `edgekd.runtimes.torch_device`: torch on cpu / cuda / npu (Ascend via torch_npu): synchronized latency,
  peak device memory, optional power sampling; `torch_npu_status()` probes torch_npu safely.

Nothing is imported here, so `import edgekd.runtimes` stays cheap.
"""
