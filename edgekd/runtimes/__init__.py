"""Runtimes edgekd runs models on, one module each; heavy SDKs are imported inside functions.

- `edgekd.runtimes.openvino_rt`: OpenVINO CPU inference and parity against a reference.
- `edgekd.runtimes.npu`: torch on cpu / cuda / npu (Ascend via torch_npu): synchronized latency,
  peak device memory, optional power sampling; `torch_npu_status()` probes torch_npu safely.

Nothing is imported here, so `import edgekd.runtimes` stays cheap.
"""
