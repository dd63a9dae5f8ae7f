"""Data-parallel training with ``torch.distributed``: process-group set-up and the collectives training uses.

A run started by ``torchrun`` has ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in its environment; :func:`init_distributed`
reads them and joins the process group. Without them (or with a world size
of 1) every helper here works on a single process and performs no
communication, so the same training code runs in both settings.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "init_distributed", "shutdown_distributed"]

logger = logging.getLogger("nssm.distributed")


@dataclass(frozen=True)
class DistributedContext:
    """Position of this process in a data-parallel run.

    Attributes:
        rank: Global rank, 0 for the process that writes files.
        world_size: Number of processes.
        local_rank: Rank on this machine, which picks the GPU.
        device: Device of the model and data on this process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the only process that writes files and prints results."""
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Return the element-wise sum of ``tensor`` over all processes (``tensor`` itself is unchanged)."""
        if not self.distributed:
            return tensor.clone()
        total = tensor.detach().to(self.device).clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(tensor.device)

    def all_reduce_max(self, value: float) -> float:
        """Return the maximum of ``value`` over all processes."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Return ``tensor`` from every process, in rank order; each process must pass the same shape."""
        if not self.distributed:
            return [tensor.clone()]
        local = tensor.detach().to(self.device).contiguous()
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        return [item.to(tensor.device) for item in gathered]

    def barrier(self) -> None:
        """Wait until every process reaches this point."""
        if self.distributed:
            dist.barrier()


def _environment_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer") from None


def init_distributed(device: str = "cpu", backend: str = "auto", init_method: str = "env://") -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment, or run alone.

    Args:
        device: ``"cpu"``, or ``"cuda"`` for one GPU per process (``cuda:LOCAL_RANK``).
        backend: ``"gloo"``, ``"nccl"``, or ``"auto"``: nccl with CUDA devices, gloo on CPU.
        init_method: Rendezvous URL: ``env://`` reads ``MASTER_ADDR`` and
            ``MASTER_PORT`` (torchrun sets them); ``file:///shared/path`` meets
            through a file on a shared filesystem instead, with no TCP store.

    Returns:
        The context of this process; a single-process one when ``WORLD_SIZE`` is unset or 1.

    Raises:
        ValueError: If the device or backend is unknown, CUDA is requested but not
            available, or nccl is requested for CPU tensors.
    """
    if device not in {"cpu", "cuda"}:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if backend not in {"auto", "gloo", "nccl"}:
        raise ValueError(f"distributed backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested, but torch finds no CUDA device; use --device cpu")
    if backend == "nccl" and device != "cuda":
        raise ValueError("the nccl backend needs CUDA tensors; pass --device cuda or use --dist-backend gloo")

    world_size = _environment_int("WORLD_SIZE", 1)
    rank = _environment_int("RANK", 0)
    local_rank = _environment_int("LOCAL_RANK", 0)
    # NOTE: the cuda and nccl paths are written to torch's documented API but were only run on CPU.
    if device == "cuda":
        torch_device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(torch_device)
    else:
        torch_device = torch.device("cpu")
    if world_size <= 1:
        return DistributedContext(0, 1, 0, torch_device)

    chosen = backend if backend != "auto" else ("nccl" if device == "cuda" else "gloo")
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed support; run a single process")
    if not dist.is_initialized():
        kwargs = {"device_id": torch_device} if chosen == "nccl" else {}
        dist.init_process_group(
            backend=chosen, init_method=init_method, rank=rank, world_size=world_size, **kwargs
        )
    logger.info("rank %d of %d joined the %s process group on %s", rank, world_size, chosen, torch_device)
    return DistributedContext(rank, world_size, local_rank, torch_device)


def shutdown_distributed(context: DistributedContext) -> None:
    """Leave the process group, if this process joined one."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()
