"""The distillation loop under torchrun with 2 gloo processes equals a 1-process run with the
same global batch (each rank takes an interleaved half of every batch; DDP averages gradients)."""
import os
import socket
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from edgekd import zoo
    from edgekd.config import DataConfig, DistillConfig, LossConfig
    from edgekd.data import load
    from edgekd import dist as ddp
    from edgekd.distill.losses import build_losses
    from edgekd.distill.trainer import seed_everything, train

    out, batch = sys.argv[1], int(sys.argv[2])
    rank, world = ddp.init("cpu")
    s = load(DataConfig(kind="digits"))
    n = (len(s.x_train) // 128) * 128  # equal shards, no ragged last batch
    seed_everything(0)
    teacher = zoo.build("mlp", hidden=[32]).eval()
    seed_everything(1)
    student = zoo.build("mlp", hidden=[16])
    losses = [LossConfig(kind="soft_label", weight=0.7, temperature=2.0), LossConfig(kind="hard_label", weight=0.3)]
    ls = build_losses(losses, student, teacher, torch.as_tensor(s.x_val[:4]))
    cfg = DistillConfig(epochs=2, batch_size=batch, lr=3e-3, seed=0, losses=losses)
    train(student, s.x_train[:n], s.y_train[:n], s.x_val, s.y_val, cfg, teacher=teacher, loss_set=ls,
          rank=rank, world_size=world)
    if rank == 0:
        torch.save(student.state_dict(), out)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one.pt"
    subprocess.run([sys.executable, str(script), str(one), "64"], check=True, env=env, timeout=300)
    two = tmp_path / "two.pt"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                        f"--master_port={_free_port()}", str(script), str(two), "32"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(one), torch.load(two)
    for k in a:
        diff = (a[k] - b[k]).abs().max().item()
        assert diff < 1e-4, f"{k}: 2-process weights differ from 1-process by {diff}"
    # training really moved the weights: the match is not between two untouched initialisations
    from edgekd import zoo
    from edgekd.distill.trainer import seed_everything

    seed_everything(0)
    zoo.build("mlp", hidden=[32])
    seed_everything(1)
    init = zoo.build("mlp", hidden=[16]).state_dict()
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-2
