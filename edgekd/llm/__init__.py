"""Sequence-level distillation of causal language models (the `text-generation` recipes).

The teacher generates answers to a prompt set (stage `generate`, cached and resumable), the
student is fine-tuned on them (SFT) with token-level KD on the teacher's cached top-k logits
(stage `distill`), exported to ONNX with a KV cache and run by an own greedy loop on onnxruntime
(stage `export`), compressed into weight-only / dynamic INT8 and INT4 candidates (stage
`quantize`), and profiled as a user compares models for a phone: time to first token, tokens/s,
peak memory, energy per token (stage `profile`). Heavy libraries are imported inside functions.

The stages themselves are edgekd/tasks/text_generation.py; the training loop, the KD loss and the
top-k teacher cache are edgekd/distill/'s. This package holds what is specific to causal LMs.
"""
