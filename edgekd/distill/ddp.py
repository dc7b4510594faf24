"""Multi-process training under `torchrun`: rank/world from the environment, the backend chosen
by device (gloo on CPU, nccl on CUDA, hccl on an Ascend NPU when torch_npu is present)."""
from __future__ import annotations

import os


def rank_world() -> tuple[int, int]:
    """(rank, world_size) as torchrun sets them; (0, 1) outside torchrun. No torch import."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def backend_for(device: str) -> str:
    return {"cuda": "nccl", "npu": "hccl"}.get(device, "gloo")


def init(device: str = "cpu") -> tuple[int, int]:
    """Join the process group if running under torchrun; return (rank, world_size)."""
    rank, world = rank_world()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            if device == "npu":
                import torch_npu  # noqa: F401  (registers the hccl backend; only on Ascend hosts)
            dist.init_process_group(backend=backend_for(device))
    return rank, world


def barrier() -> None:
    _, world = rank_world()
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
