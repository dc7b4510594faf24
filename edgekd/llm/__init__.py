"""Sequence-level distillation of causal language models (the `text-generation` recipes).

The teacher generates answers to a prompt set (stage `generate`, cached and resumable), the
student is fine-tuned on them (SFT) with token-level KD on the teacher's cached top-k logits
(stage `distill`), exported to ONNX with a KV cache and run by an own greedy loop on onnxruntime
(stage `export`), compressed into weight-only / dynamic INT8 and INT4 candidates (stage
`quantize`), and profiled as a user compares models for a phone: time to first token, tokens/s,
peak memory, energy per token (stage `profile`). Heavy libraries are imported inside functions.
"""
