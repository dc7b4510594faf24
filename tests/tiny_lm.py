"""A tiny random Llama with tied embeddings, saved as an HF folder and exported with its KV cache: the ONNX language
model the head-trimming and weight-only tests edit. Seconds."""
from __future__ import annotations

from pathlib import Path


def tied_llama_onnx(d: Path, vocab: int = 96, hidden: int = 32, intermediate: int = 64):
    """(the torch model, the KV-cache ONNX path) of a 2-layer Llama written under `d` (hf/, onnx/)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgekd.llm.onnx_gen import export_with_past

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # peaked logits: greedy decoding is not decided by rounding
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(d / "hf")
    return model, export_with_past(d / "hf", d / "onnx", 17)
