"""Exporters: ONNX (+ parity), and target bundles (ascend)."""
