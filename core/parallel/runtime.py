"""The process groups of a multi-process run, and the collectives the forward calls.

Ranks find each other through torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), which `launch.py` also sets for the ranks it spawns itself.  Two groups:
- the default group carries the forward's tensors: gloo for CPU tensors, NCCL for CUDA ones (one
  group with both backends), with a timeout, so a rank that stops answering ends the run instead of
  hanging it (LLAMATORCH_DIST_TIMEOUT seconds, default 300);
- a gloo `control` group carries rank 0's orders to the others (remote.py); a follower may wait there
  for hours (a server between requests), so its timeout is long.  A rank that dies closes its
  sockets, which the others see at once.

The forward's collectives are PyTorch's functional ones (`_c10d_functional`): out-of-place ops that
CUDA graphs capture like any other kernel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 300.0
CONTROL_TIMEOUT = timedelta(days=7)


@dataclass
class Runtime:
    rank: int
    world: int
    local_rank: int
    mode: str  # "tp": tensor parallel (one model split over the ranks); "dp": data parallel (a copy each)
    control: object  # the gloo group of rank 0's orders
    group_name: str  # the default group, for the functional collectives

    @property
    def leader(self) -> bool:
        return self.rank == 0


_runtime: Runtime | None = None


def env_world() -> int:
    """WORLD_SIZE as torchrun (or launch.py) set it; 1 outside a multi-process run."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def init(mode: str) -> Runtime:
    """Join the run described by the environment (idempotent)."""
    global _runtime
    if _runtime is not None:
        return _runtime
    rank, world = int(os.environ["RANK"]), env_world()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    timeout = timedelta(seconds=float(os.environ.get("LLAMATORCH_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    cuda = torch.cuda.is_available() and dist.is_nccl_available()
    if cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timeout)
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    _runtime = Runtime(rank, world, local_rank, mode, control, dist.group.WORLD.group_name)
    return _runtime


def current() -> Runtime | None:
    return _runtime


def tensor_parallel() -> Runtime | None:
    """The runtime when this process is a rank of a tensor-parallel run (torchrun with one process
    too, though its engine then loads the whole model, with no collectives: engine.py)."""
    return _runtime if _runtime is not None and _runtime.mode == "tp" else None


def shutdown() -> None:
    global _runtime
    if _runtime is not None and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # (a peer already gone: nothing left to tear down cleanly)
            pass
    _runtime = None


# ---- the forward's collectives ---------------------------------------------------------------------


def all_reduce(x: torch.Tensor, group_name: str) -> torch.Tensor:
    """Sum of x over the ranks (a new tensor)."""
    y = torch.ops._c10d_functional.all_reduce(x, "sum", group_name)
    return torch.ops._c10d_functional.wait_tensor(y)


def all_gather_columns(x: torch.Tensor, world: int, group_name: str) -> torch.Tensor:
    """x [N, C] from every rank -> [N, world * C], rank 0's columns first."""
    y = torch.ops._c10d_functional.all_gather_into_tensor(x.contiguous(), world, group_name)
    y = torch.ops._c10d_functional.wait_tensor(y)  # [world * N, C]
    n, c = x.shape
    return y.view(world, n, c).permute(1, 0, 2).reshape(n, world * c)
