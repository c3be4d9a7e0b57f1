"""Process-group set-up for every launcher, and exact distributed evaluation.

Launchers (the official code's limits: docs/official-behaviour.md, "Launchers and distributed runs"):

* ``python main.py ...``: one process; CUDA when present, else CPU; no process group.
* ``torchrun --nproc_per_node=N [--nnodes ...] main.py ...``: RANK / WORLD_SIZE / LOCAL_RANK from
  the environment; several nodes work because the global rank comes from RANK, not LOCAL_RANK.
* ``python -m torch.distributed.launch --nproc_per_node=N main.py ...``: the same variables, plus a
  ``--local-rank=N`` (or, on old versions, ``--local_rank N``) argument that main.py accepts.
* SLURM ``srun``: SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID when WORLD_SIZE is not set.

NCCL on GPUs, gloo on CPU. On CUDA every process binds to the GPU of its LOCAL_RANK
(``torch.cuda.set_device``, the NCCL group's ``device_id``, DDP's ``device_ids`` in main.py), so the
processes of a node use one GPU each. Evaluation shards the dataset without padding
(``ShardSampler``) and ``gather_by_index`` reassembles exactly the dataset's samples, once each, in
dataset order.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process sits: global rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(*names: str) -> Optional[int]:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return None


def init_distributed(local_rank_arg: Optional[int] = None, device: str = "auto", init_method: str = "env://",
                     timeout_minutes: float = 30.0) -> DistInfo:
    """Read the launcher's variables, pick the device and backend, and join the process group."""
    world_size = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK")
    if world_size is None and (_env_int("SLURM_NTASKS") or 1) > 1 and "MASTER_ADDR" in os.environ:
        world_size, rank, local_rank = _env_int("SLURM_NTASKS"), _env_int("SLURM_PROCID"), _env_int("SLURM_LOCALID")
    world_size = world_size or 1
    rank = rank or 0
    if local_rank is None:
        local_rank = local_rank_arg if local_rank_arg is not None else 0

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available to this process (pass --device cpu)")
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible to this "
                             f"process; start at most that many processes per node (or pass --device cpu)")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")

    info = DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)
    if world_size > 1:
        info.backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            # NCCL: bound to this process's GPU at once (collectives and barriers then never guess a device).
            bound = {"device_id": dev} if info.backend == "nccl" else {}
            dist.init_process_group(info.backend, init_method=init_method, rank=rank, world_size=world_size,
                                    timeout=datetime.timedelta(minutes=timeout_minutes), **bound)
    return info


def cuda_bf16_problem(device: torch.device) -> Optional[str]:
    """Why the GPU ``device`` cannot run bfloat16 autocast (one line), or None when it can: bfloat16
    arithmetic needs compute capability 8.0 (Ampere) or later; older GPUs only emulate it, slowly."""
    major, minor = torch.cuda.get_device_capability(device)
    if major >= 8:
        return None
    return (f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no bfloat16 "
            f"arithmetic (8.0 or later)")


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (a copy on this rank's device)."""
    out = tensor.detach().clone().to(info.device)
    if info.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


class ShardSampler(torch.utils.data.Sampler):
    """Indices ``rank, rank + W, rank + 2W, ...`` of a dataset: every sample on exactly one rank, no padding.

    Ranks may get one sample more or less than others; that is fine for evaluation without gradients.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


def gather_by_index(rows: torch.Tensor, indices: torch.Tensor, total: int, info: DistInfo) -> torch.Tensor:
    """Reassemble per-sample rows computed on every rank into one (total, ...) tensor on every rank.

    rows: (n_local, ...) this rank's results; indices: (n_local,) their dataset indices. Raises if a
    sample is missing or appears twice. The result is on the CPU.
    """
    rows, indices = rows.detach(), indices.detach().long()
    if info.distributed:
        device = info.device
        count = torch.tensor([rows.shape[0]], device=device)
        counts = [torch.zeros_like(count) for _ in range(info.world_size)]
        dist.all_gather(counts, count)
        counts = [int(c.item()) for c in counts]
        longest = max(counts)
        padded = rows.new_zeros((longest,) + tuple(rows.shape[1:])).to(device)
        padded[:rows.shape[0]] = rows.to(device)
        padded_idx = torch.full((longest,), -1, dtype=torch.long, device=device)
        padded_idx[:indices.shape[0]] = indices.to(device)
        all_rows = [torch.empty_like(padded) for _ in range(info.world_size)]
        all_idx = [torch.empty_like(padded_idx) for _ in range(info.world_size)]
        dist.all_gather(all_rows, padded)
        dist.all_gather(all_idx, padded_idx)
        rows = torch.cat([r[:c].cpu() for r, c in zip(all_rows, counts)])
        indices = torch.cat([i[:c].cpu() for i, c in zip(all_idx, counts)])
    else:
        rows, indices = rows.cpu(), indices.cpu()
    seen = torch.bincount(indices, minlength=total) if indices.numel() else torch.zeros(total, dtype=torch.long)
    if indices.numel() and (indices.min() < 0 or indices.max() >= total):
        raise RuntimeError(f"gathered sample indices outside 0..{total - 1}")
    if seen.numel() != total or (seen != 1).any():
        missing = (seen == 0).nonzero().flatten()[:5].tolist()
        repeated = (seen > 1).nonzero().flatten()[:5].tolist()
        raise RuntimeError(f"distributed evaluation covered the {total} samples unevenly: "
                           f"missing e.g. {missing}, repeated e.g. {repeated}")
    out = rows.new_empty((total,) + tuple(rows.shape[1:]))
    out[indices] = rows
    return out

