"""torch.distributed set-up for ``torchrun --nproc_per_node N -m fastconv.train``.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (and the rendezvous address); with
WORLD_SIZE > 1 the trainer joins a process group: nccl when it trains on CUDA, gloo
on CPU. Every rank holds the same model (DDP broadcasts rank 0's weights at wrap time
and averages gradients), reads its own shard of each epoch, and rank 0 alone logs and
writes checkpoints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def from_env() -> World:
    """This process's place in the launch (a single process when WORLD_SIZE is unset or 1)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ValueError(f"malformed torchrun environment (RANK/LOCAL_RANK/WORLD_SIZE): {e}") from None
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"malformed torchrun environment: RANK={rank}, WORLD_SIZE={size}")
    return World(rank, size, local)


def init(world: World, device: torch.device) -> None:
    if world.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank,
                                world_size=world.size)


def shutdown(world: World, clean: bool) -> None:
    """Leave the process group. After a clean run every rank first waits for the others (a
    barrier), so no rank tears down its connections while a peer still uses them: rank 1,
    done before rank 0 had written its checkpoint, was seen aborting at exit ("terminate
    called without an active exception"). After an error there is no barrier (the peers may
    never reach it; torchrun stops them)."""
    if world.distributed and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def all_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (the values themselves on one process)."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if not world.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
