"""Training one network on several processes (GPUs, machines) launched by torchrun.

PyTorch's DistributedDataParallel (DDP) averages the gradients; what this module adds is what
makes N processes train the network one process trains at the same global batch:

- BNTT's statistics of every step are those of the global batch (`--bntt_sync global`, the
  default; bntt/sync.py). `local` keeps each process's own statistics: cheaper, and a
  different network (each normalises with a fraction of the batch).
- each process's loss is its share of the global batch's mean loss, times the process count,
  so DDP's average is the gradient of the global batch's mean loss;
- the data order, augmentation and Poisson draws are named by (seed, epoch, image)
  (bntt/seeding.py, bntt/data/sampling.py), so they do not depend on the process count.

A process started without torchrun is a world of one, and nothing here changes what it does.
"""
from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from bntt.bntt import BNTT

SYNC_MODES = ("global", "local")

# The norms whose statistics are not exchanged across processes (only BNTT's are,
# bntt/sync.py), and what they keep: with --bntt_sync global they are refused.
UNSYNCHRONISED = {
    "bn": "shares one set of statistics by all steps",
    "tdbn": "shares one set of statistics by all steps",
    "tebn": "shares one set of statistics by all steps",
    "tab": "takes the statistics of steps 1..t for step t",
    "mpbn": "shares one set of statistics by all steps, and one of the membrane",
}


@dataclass
class World:
    """This process's place among the processes training one network."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (a process group exists, even for one process)
    group: object = None  # the group BNTT exchanges its statistics in

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the checkpoints and the logs and draws the progress bars."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def restart_count() -> int:
    """How many times torchrun restarted this job's processes (its --max_restarts)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def process_device(name: str) -> str:
    """The device a process uses: under torchrun, `auto` and `cuda` mean the GPU of its local
    rank. Raises ValueError for a device that several processes would share."""
    if not launched_by_torchrun():
        return name
    local_rank = int(os.environ["LOCAL_RANK"])
    if name == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return f"cuda:{local_rank}"
    if name.startswith("cuda:") and int(os.environ["WORLD_SIZE"]) > 1:
        raise ValueError(f"--device {name} under torchrun: each process uses the GPU of its "
                         "local rank; pass --device cuda or auto")
    return name


def start(device: torch.device) -> World:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs); a plain
    process returns a world of one."""
    if not launched_by_torchrun():
        return World()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        _init_process_group("nccl" if device.type == "cuda" else "gloo")
    # BNTT's exchanges get a group of their own, apart from DDP's gradient buckets
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]),
                 launched=True, group=dist.new_group())


def _init_process_group(backend: str) -> None:
    env = os.environ
    shared_store = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if shared_store and restart_count() and env.get("GROUP_WORLD_SIZE") == "1":
        # torchrun keeps its store across restarts, where the processes of the failed attempt
        # left their addresses: a new process could read one and fail to connect (PyTorch
        # issue 135712). One machine has one restart count, so it names fresh keys.
        store = dist.PrefixStore(f"bntt/restart-{restart_count()}",
                                 dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]),
                                               int(env["WORLD_SIZE"]), is_master=False))
        dist.init_process_group(backend, store=store, rank=int(env["RANK"]),
                                world_size=int(env["WORLD_SIZE"]))
        return
    if shared_store and int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")) and env.get("RANK") == "0":
        print("warning: torchrun restarts on several machines share one store; launch with "
              "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 so that a restarted job connects reliably",
              file=sys.stderr)
    dist.init_process_group(backend)


def stop(world: World) -> None:
    if world.launched and dist.is_initialized():
        dist.destroy_process_group()


def prepare_model(model: nn.Module, world: World, sync: str) -> nn.Module:
    """The module to train with: `model` itself in a plain process, else `model` wrapped in
    DDP, with the statistics of its normalisation layers shared as `sync` says."""
    if not world.launched:
        return model
    if sync == "global":
        norm = getattr(model, "norm", None)
        if norm in UNSYNCHRONISED:
            raise ValueError(f"--norm {norm} {UNSYNCHRONISED[norm]}, which is kept per process: "
                             "train it with --bntt_sync local")
        for layer in model.modules():
            if isinstance(layer, BNTT):
                layer.sync_group = world.group
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            if model_device(model).type != "cuda":  # the ANN twin: torch's SyncBatchNorm
                raise ValueError("the ANN's BatchNorm layers synchronise across processes on "
                                 "GPUs only: on CPUs train it with --bntt_sync local")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model, world.group)
    device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
    # Statistics kept per process differ: DDP then copies rank 0's buffers at every forward.
    # (torch >= 2.14 names that option forward_sync_buffers; older ones broadcast_buffers.)
    ddp = nn.parallel.DistributedDataParallel
    option = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
              else "broadcast_buffers")
    return ddp(model, device_ids=device_ids, **{option: sync == "local"})


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def global_batch_loss(logits: torch.Tensor, labels: torch.Tensor, global_size: int,
                      world: World) -> torch.Tensor:
    """This process's part of the global batch's mean cross-entropy, times the process count:
    DDP averages the processes' gradients, which then are those of the global mean loss."""
    if not world.launched:
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels, reduction="sum") * (world.size / global_size)


def sum_over_processes(values, world: World, device) -> list[float]:
    """Each of `values` (numbers) summed over all processes, in float64."""
    if not world.launched:
        return [float(v) for v in values]
    packed = torch.tensor([float(v) for v in values], dtype=torch.float64,
                          device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(packed)
    return packed.tolist()


def rank0_says(ok: bool, world: World, device) -> bool:
    """Rank 0's `ok` on every process (the others pass anything): what only rank 0 can find out,
    such as whether it got the run folder's lock, decided for all of them at once."""
    if not world.launched:
        return ok
    flag = torch.tensor([int(bool(ok))], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def share_buffers(model: nn.Module, world: World) -> None:
    """Give every process rank 0's buffers (running statistics kept per process differ)."""
    if world.launched:
        for buffer in unwrap(model).buffers():
            dist.broadcast(buffer, src=0)
