"""Multi-process training with `torch.distributed` and DistributedDataParallel, launched by `torchrun`.

torchrun starts one process per rank and tells each where it stands through RANK, WORLD_SIZE and
LOCAL_RANK (and MASTER_ADDR/MASTER_PORT for the rendezvous). The CLI reads them once, with
`context_from_env`, into a `DistributedContext` that it hands down; nothing else reads the
environment. With one process the context has world_size 1 and every helper here does nothing, so
training has a single code path.

How the work is split (see `anomaly.training.train.train_detector`): every rank holds the same prepared
frames and draws the same global batch from (seed, step); each trains on its own contiguous shard
of that batch and DDP averages the gradients, so the ranks' shards together are exactly the batch a
single process would use. Calibration frames are sharded the same way and their raw signals
gathered back in order, so the statistics are fitted on exactly the frames a single process uses.
Only rank 0 writes files.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from anomaly.model import AutoencoderGAN

T = TypeVar("T", np.ndarray, torch.Tensor)


class DistributedContext(BaseModel):
    """This process's place among the training processes (one process: rank 0 of 1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @model_validator(mode="after")
    def _check(self) -> DistributedContext:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(
                f"invalid distributed setting: rank {self.rank}, world size {self.world_size}, "
                f"local rank {self.local_rank} (need 0 <= rank < world size and local rank >= 0)"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and writes files; the others only compute."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """Each rank of a multi-GPU node takes the GPU of its local rank."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device


SINGLE_PROCESS = DistributedContext()  # an immutable default, not shared state


def context_from_env(environ: Mapping[str, str]) -> DistributedContext:
    """The context torchrun describes in the environment; a plain process is rank 0 of 1."""
    if "WORLD_SIZE" not in environ:
        return DistributedContext()
    try:
        return DistributedContext(
            rank=int(environ.get("RANK", "0")),
            world_size=int(environ["WORLD_SIZE"]),
            local_rank=int(environ.get("LOCAL_RANK", "0")),
        )
    except ValueError as exc:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK from torchrun could not be read: {exc}") from None


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def process_group(
    ctx: DistributedContext,
    device: torch.device,
    init_method: str = "env://",
    timeout: timedelta = timedelta(minutes=30),
) -> Iterator[None]:
    """Join the other ranks for the duration of the block (nothing to do for a single process)."""
    if not ctx.enabled:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(
        backend_for(device), init_method=init_method, rank=ctx.rank, world_size=ctx.world_size, timeout=timeout
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard_bounds(n: int, ctx: DistributedContext) -> tuple[int, int]:
    """[lo, hi) of this rank's contiguous share of n items; shares differ by at most one item."""
    base, extra = divmod(n, ctx.world_size)
    lo = ctx.rank * base + min(ctx.rank, extra)
    return lo, lo + base + (ctx.rank < extra)


def shard(items: T, ctx: DistributedContext) -> T:
    """This rank's contiguous share of `items`; concatenated in rank order, the shares are `items`."""
    lo, hi = shard_bounds(len(items), ctx)
    return items[lo:hi]


def _comm_device() -> torch.device:
    """Collectives run on the GPU under NCCL, on the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(t: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Every rank's rows of `t`, concatenated in rank order, on every rank (shards may differ in length)."""
    if not ctx.enabled:
        return t
    comm = _comm_device()
    count = torch.tensor([len(t)], dtype=torch.int64, device=comm)
    counts = [torch.zeros_like(count) for _ in range(ctx.world_size)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=comm)
    padded[: len(t)] = t.to(comm)
    gathered = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes, strict=True)]).to(t.device)


def broadcast_state(module: nn.Module, ctx: DistributedContext) -> None:
    """Copy rank 0's parameters and buffers to every rank.

    DDP keeps parameters in step, but each rank's last forward pass updates its own BatchNorm running
    statistics; calibration and the checkpoint must all see rank 0's.
    """
    if not ctx.enabled:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def barrier(ctx: DistributedContext) -> None:
    """Wait for every rank (e.g. until rank 0 has written the checkpoint)."""
    if ctx.enabled:
        dist.barrier()


class _Autoencoder(nn.Module):
    """Encoder and decoder as one module, so DDP averages their gradients together."""

    def __init__(self, model: AutoencoderGAN) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.decoder = model.decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latent, _ = self.encoder(x)
        return self.decoder(latent)


class _FreezableDDP(nn.Module):
    """DDP for a network that training sometimes freezes.

    `train_step` runs the discriminator with requires_grad off to send the adversarial gradient to
    the autoencoder only. A DDP forward pass then waits for discriminator gradients that never come
    ("Expected to have finished reduction in the prior iteration"), so frozen passes bypass DDP:
    they need no gradient averaging.
    """

    def __init__(self, module: nn.Module, device_ids: list[int] | None) -> None:
        super().__init__()
        self.ddp = DistributedDataParallel(module, device_ids=device_ids)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        module = self.ddp.module
        if any(p.requires_grad for p in module.parameters()):
            return self.ddp(x)
        return module(x)


class DistributedGAN:
    """What `train_step` and `finder_step` use of an `AutoencoderGAN` (`reconstruct`, `discriminator`,
    `finders`), with each network wrapped in DDP. The parameters are the model's own: optimisers and
    checkpoints see no difference."""

    def __init__(self, model: AutoencoderGAN, device: torch.device) -> None:
        device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
        self.autoencoder = DistributedDataParallel(_Autoencoder(model), device_ids=device_ids)
        self.discriminator = _FreezableDDP(model.discriminator, device_ids)
        self.finders = [DistributedDataParallel(finder, device_ids=device_ids) for finder in model.finders]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder(x)
