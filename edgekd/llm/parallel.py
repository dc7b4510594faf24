"""A language-model student trained by several processes: DDP, or FSDP2 (`fully_shard`) when the model does
not fit one device, on torch.distributed's process group (edgekd.dist; torchrun starts the processes).

Each rank takes an interleaved share of every global batch; its loss is scaled by its share of the batch's
answer tokens, so the averaged gradient is the gradient of the global batch's mean loss: a run on N
processes follows a 1-process run at the same global batch. Checkpoints hold full (unsharded) state dicts
keyed by parameter name (torch.distributed.checkpoint's state-dict API), so a run resumes on any world
size, FSDP or not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from edgekd import dist
from edgekd.errors import ConfigError

MODES = ("ddp", "fsdp", "auto")


def position_logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The logits of causal LM `model` at the rows `index` ([(batch row, position)]) of a padded batch: the
    decoder runs on every token, the vocabulary projection only at those rows."""
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    return model.get_output_embeddings()(hidden[index[:, 0], index[:, 1]])


class AnswerRows(nn.Module):
    """The causal LM behind one forward returning its answer-position logits: the module DDP and FSDP wrap,
    so every step runs through the wrapper's forward (FSDP gathers a unit's parameters in its forward;
    the LM's submodules called directly would see their shards)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return position_logits(self.model, ids, mask, index)


def training_bytes(model: nn.Module) -> int:
    """Memory a replica needs to train `model` with AdamW in fp32: weights, gradients and two moments."""
    return 16 * sum(p.numel() for p in model.parameters())


def device_memory(device: torch.device) -> int:
    """What one process may use on `device`: the GPU's free memory, or this node's available RAM shared by
    its processes (LOCAL_WORLD_SIZE)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available // max(1, dist.local_world()))


def choose_mode(mode: str, model: nn.Module, teacher: nn.Module | None, device: torch.device) -> tuple[str, str]:
    """(ddp|fsdp, why). `auto`: DDP while a full replica (student training state, plus the online teacher's
    weights) fits half of one process's memory, FSDP otherwise."""
    if mode not in MODES:
        raise ConfigError(f"distill.parallel must be one of {', '.join(MODES)}, got '{mode}'",
                          hint="ddp (a replica per process), fsdp (sharded), auto (fsdp when a replica does not fit)")
    need = training_bytes(model) + (4 * sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0)
    have = device_memory(device)
    if mode != "auto":
        return mode, f"distill.parallel: {mode}"
    if need <= have // 2:
        return "ddp", f"auto: a replica needs {need / 2**20:.0f} MiB of {have / 2**20:.0f} MiB per process"
    return "fsdp", f"auto: a replica needs {need / 2**20:.0f} MiB, over half of {have / 2**20:.0f} MiB per process"


def train_device() -> torch.device:
    """This process's device: its GPU (or Ascend NPU) under torchrun (LOCAL_RANK) when there is one, else the CPU."""
    import os

    kind = dist.default_device()
    if kind == "npu":
        import torch_npu  # noqa: F401  (registers the npu device; only on Ascend hosts)
    if kind == "cpu":
        return torch.device("cpu")
    return torch.device(kind, int(os.environ.get("LOCAL_RANK", "0")))


@dataclass
class Parallel:
    """The student under DDP or FSDP: `answer_rows` is its training/evaluation forward, `state` its
    full-state-dict checkpoint I/O."""

    mode: str
    model: nn.Module          # the causal LM (under FSDP its parameters are DTensor shards)
    module: nn.Module         # what runs the forward: DDP(AnswerRows) or the fully_shard-ed AnswerRows
    device: torch.device
    why: str
    plain: nn.Module | None = None  # FSDP: an unsharded copy of the model, made before sharding (gets the final weights)

    def answer_rows(self, ids: torch.Tensor, mask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.module(ids.to(self.device), mask.to(self.device), index.to(self.device))

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def train(self, mode: bool = True) -> "Parallel":
        self.module.train(mode)
        return self

    def eval(self) -> "Parallel":
        return self.train(False)


def wrap(model: nn.Module, mode: str, teacher: nn.Module | None = None) -> Parallel:
    """`model` (a Hugging Face causal LM with `model.model.layers`) under DDP or FSDP2 in the joined group."""
    device = train_device()
    chosen, why = choose_mode(mode, model, teacher, device)
    model.to(device)
    plain = None
    if chosen == "fsdp":
        import copy

        plain = copy.deepcopy(model).to("cpu")
    root = AnswerRows(model)
    if chosen == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        module: nn.Module = DistributedDataParallel(root, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:  # one unit per decoder layer; embeddings, norm and head in the root
            fully_shard(layer)
        module = fully_shard(root)
    return Parallel(chosen, model, module, device, why, plain)


class FullState:
    """`fit`'s checkpoint I/O for a model that may be sharded: full state dicts keyed by parameter name,
    gathered on every rank (collectives: every rank calls them), so a checkpoint written at one world size
    (or by FSDP) loads at another (or without it)."""

    def __init__(self, model: nn.Module) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        self.model = model
        self.options = StateDictOptions(full_state_dict=True)

    def model_state(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return {k: v.detach().to("cpu", copy=True) for k, v in get_model_state_dict(self.model, options=self.options).items()}

    def load_model_state(self, sd: dict[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.model, sd, options=self.options)

    def opt_state(self, opt: torch.optim.Optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return _to_cpu(get_optimizer_state_dict(self.model, opt, options=self.options))

    def load_opt_state(self, opt: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.model, opt, sd, options=self.options)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def rank_share(indices: list[int], rank: int, world: int) -> list[int]:
    """This rank's interleaved share of a global batch (every rank's share together is the batch)."""
    return indices[rank::world]
