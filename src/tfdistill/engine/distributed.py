"""Process-group setup for ``torchrun`` (DDP) and small collective helpers that are no-ops on one process.

Data parallelism (``torchrun --nproc_per_node=N -m tfdistill train ...``; multi-node with torchrun's ``--nnodes``
/ ``--rdzv-*`` flags): NCCL on GPUs, gloo on CPUs. ``data.batch_size`` is the global batch, sharded by the data
layer; the :class:`~tfdistill.methods.Method` (student + components' trainable modules, never the frozen teacher) is wrapped in
DistributedDataParallel, optionally after SyncBatchNorm conversion (``engine.sync_bn``, GPU only); metric sums and
eval counts are all-reduced; rank 0 alone writes the run directory; checkpoints hold the unwrapped modules and every
rank's RNG state; components with a ``gather`` hook (CRD's memory bank) get an all-gather so every rank applies the
global batch's update. With a BatchNorm-free model a 2-process run reproduces the 1-process run with the same global
batch to float32 rounding (tests/test_distributed.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_spec: str = "auto") -> DistInfo:
    """Initialise the default process group when launched by torchrun (WORLD_SIZE > 1); otherwise no-op.

    The backend is NCCL when the run uses CUDA and gloo otherwise. Calling it twice is harmless.
    """
    global _OWNED
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and not str(device_spec).startswith(("cpu", "mps"))
        if use_cuda:
            if local >= torch.cuda.device_count():
                from ..errors import ConfigError

                raise ConfigError(f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} CUDA "
                                  f"device(s); start at most that many processes per node (--nproc_per_node)")
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        _OWNED = True
    return DistInfo(rank=rank, world_size=world, local_rank=local)


_OWNED = False
"""True when :func:`setup_distributed` created the default process group (and so may destroy it)."""


def cleanup_distributed(force: bool = False) -> None:
    """Destroy the default process group if :func:`setup_distributed` created it (or ``force``).

    A process group that the caller initialised itself (a notebook, another launcher) is left alone.
    """
    global _OWNED
    if dist.is_available() and dist.is_initialized() and (_OWNED or force):
        dist.destroy_process_group()
        _OWNED = False


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_or_raise(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank -- or, when it is an exception, that exception raised on every rank (rather
    than the others waiting for rank 0 forever). All ranks pass a barrier first: a rank that raised at once could
    tear down the process group while a peer was still receiving, and on torch 2.4 (gloo, a loaded machine) both
    then hung in ``destroy_process_group``."""
    obj = broadcast_object(obj, info)
    barrier(info)
    if isinstance(obj, BaseException):
        raise obj
    return obj


def broadcast_tensors(tensors, info: DistInfo, src: int = 0) -> None:
    """Overwrite ``tensors`` (in place) on every rank with rank ``src``'s values."""
    if info.enabled:
        for t in tensors:
            dist.broadcast(t.data, src=src)


def gather_object(obj, info: DistInfo) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` on one process)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t``'s rows over the ranks of the default process group, in rank order (no gradient).

    Every rank must pass a tensor of the same shape. Without an initialised process group it returns ``t``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    t = t.detach().contiguous()
    out = torch.empty((dist.get_world_size() * t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
    gather(out, t)
    return out
