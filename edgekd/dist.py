"""torch.distributed for edgekd: the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR...),
the backend chosen by device (gloo on CPU, nccl on CUDA, hccl on an Ascend NPU when torch_npu is present),
and the few collectives the build needs beyond DDP/FSDP's own: agree on a status, hand rank 0's result
to the others, sum counters.

No launcher of our own: `torchrun --nproc_per_node N [--nnodes M --rdzv-endpoint HOST:PORT] -m edgekd build ...`
starts the processes; this module only joins the group they form. Outside torchrun every function is a
no-op for one process, and nothing here imports torch until a group is joined.
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any

from edgekd.errors import EdgekdError

# Ranks that wait while rank 0 runs a stage alone (teacher training, quantization, profiling) sit in a
# collective that long: the default 30 min of gloo would cut a full build's profile stage short.
# EDGEKD_DIST_TIMEOUT (seconds) overrides it.
DEFAULT_TIMEOUT_S = 6 * 3600


def rank_world() -> tuple[int, int]:
    """(rank, world_size) as torchrun sets them; (0, 1) outside torchrun. No torch import."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_world() -> int:
    """Processes on this node (torchrun's LOCAL_WORLD_SIZE): they share its memory and cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def backend_for(device: str) -> str:
    """gloo on CPU; on CUDA nccl for the GPU tensors DDP/FSDP exchange and gloo beside it for the CPU
    objects the build agrees on; hccl on an Ascend NPU."""
    return {"cuda": "cpu:gloo,cuda:nccl", "npu": "hccl"}.get(device, "gloo")


def default_device() -> str:
    """Where this process computes: "cuda" when torch sees a GPU, "npu" on an Ascend host (torch_npu installed
    and CANN's environment set: torch_npu is imported only there, as it breaks `import torch` elsewhere),
    else "cpu"."""
    import importlib.util

    import torch

    if torch.cuda.is_available():
        return "cuda"
    if importlib.util.find_spec("torch_npu") is not None and (os.environ.get("ASCEND_HOME_PATH")
                                                             or os.environ.get("ASCEND_TOOLKIT_HOME")):
        return "npu"
    return "cpu"


def init(device: str = "cpu") -> tuple[int, int]:
    """Join the process group if running under torchrun; return (rank, world_size). Idempotent."""
    rank, world = rank_world()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            if device == "npu":
                import torch_npu  # noqa: F401  (registers the hccl backend; only on Ascend hosts)
            if device == "cuda":
                import torch

                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            timeout = _dt.timedelta(seconds=float(os.environ.get("EDGEKD_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
            dist.init_process_group(backend=backend_for(device), timeout=timeout)
            import atexit

            # leave the group before the interpreter tears down: a gloo group still alive at exit can
            # abort the process ("terminate called without an active exception") after a clean run
            atexit.register(_leave)
    return rank, world


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """True in a joined group of more than one process."""
    if rank_world()[1] <= 1:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def broadcast(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src` on every rank (picklable objects)."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_all(*values: float) -> list[float]:
    """The element-wise sum of `values` over ranks (float64 on the group's device)."""
    if not active():
        return list(values)
    import torch
    import torch.distributed as dist

    device = "npu" if dist.get_backend() == "hccl" else "cpu"  # cpu: gloo, also beside nccl
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


@dataclass
class Failure:
    """One rank's failure, as it travels to the others: enough to raise the same error on rank 0."""

    rank: int
    kind: str
    message: str
    hint: str
    exit_code: int

    @classmethod
    def of(cls, rank: int, e: BaseException) -> "Failure":
        if isinstance(e, EdgekdError):
            return cls(rank, type(e).__name__, e.message, e.hint, e.exit_code)
        first = str(e).splitlines()[0] if str(e) else ""
        return cls(rank, type(e).__name__, f"{type(e).__name__}: {first}", "rerun with --debug for the traceback",
                   4)


class PeerFailed(EdgekdError):
    """Raised on every rank when some rank failed: rank 0 reports it (one error), the others exit quietly
    with the same exit code (`reported_by_rank0`)."""

    def __init__(self, f: Failure, here: int) -> None:
        where = "" if f.rank == here == 0 else f"rank {f.rank}: "
        super().__init__(where + f.message, hint=f.hint, exit_code=f.exit_code)
        self.failure = f
        self.reported_by_rank0 = here != 0


def agree(error: BaseException | None) -> None:
    """Every rank calls this at the same point with its own exception (or None): when any rank failed,
    every rank raises, rank 0 with the lowest failing rank's message and exit code (its own error when it
    failed itself), so a failure anywhere is one error on rank 0 and no rank goes on alone."""
    rank, _ = rank_world()
    mine = None if error is None else Failure.of(rank, error)
    if not active():
        if error is not None:
            raise error
        return
    failures = [f for f in gather(mine) if f is not None]
    if not failures:
        return
    if error is not None and rank == 0:
        raise error  # rank 0's own error, with its own type and traceback
    raise PeerFailed(failures[0], rank)


def quiet_error(e: BaseException) -> bool:
    """True for an error another rank reports (the CLI prints it on rank 0 only)."""
    return bool(getattr(e, "reported_by_rank0", False))
