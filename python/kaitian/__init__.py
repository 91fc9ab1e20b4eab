"""Kaitian for PyTorch: the torch.distributed backend "kaitian".

`import kaitian` registers the backend; then `torch.distributed.init_process_group("kaitian")`
and unmodified DistributedDataParallel run over Kaitian's engine (loaded through ctypes, so this
package has no compiled torch extension), with each device kind's own library inside its group.
"""

from __future__ import annotations

import inspect

import torch.distributed as dist

from ._native import (
    KaitianError,
    KaitianInternalError,
    KaitianInvalidArgumentError,
    KaitianInvalidUsageError,
    KaitianMismatchError,
    KaitianRemoteError,
    KaitianSystemError,
    KaitianTimeoutError,
)
from ._planning import Rebalancer, plan_batches
from .emulation import EmulatedDevice, emulate_device, emulated_speed
from .planner import (
    MeasuredPlan,
    StepCost,
    gather_speeds,
    measure_cost,
    measure_plan,
    measure_speed,
)
from .process_group import BACKEND_NAME, ProcessGroupKaitian, create_process_group, kaitian_backend, recv_from_any
from .profile import StageTimes, process_age_seconds, stage_times, thread_cpu_seconds
from .rebalance import OnlineBalancer, PlanChange
from .sampler import AdaptiveBatchSampler, AdaptiveSampler, loader_batch_size
from .telemetry import JobTelemetry, job_telemetry
from .topology import Group, Topology, intra_backends, local_device_kind
from .weighting import GradientWeighting, install_fsdp_weighting, install_weighting, weighted_allreduce_hook

__all__ = [
    "BACKEND_NAME",
    "AdaptiveBatchSampler",
    "AdaptiveSampler",
    "EmulatedDevice",
    "GradientWeighting",
    "JobTelemetry",
    "OnlineBalancer",
    "PlanChange",
    "Rebalancer",
    "StageTimes",
    "Group",
    "KaitianError",
    "KaitianInternalError",
    "KaitianInvalidArgumentError",
    "KaitianInvalidUsageError",
    "KaitianMismatchError",
    "KaitianRemoteError",
    "KaitianSystemError",
    "KaitianTimeoutError",
    "ProcessGroupKaitian",
    "StepCost",
    "MeasuredPlan",
    "Topology",
    "emulate_device",
    "emulated_speed",
    "gather_speeds",
    "install_fsdp_weighting",
    "install_weighting",
    "intra_backends",
    "job_telemetry",
    "kaitian_backend",
    "loader_batch_size",
    "local_device_kind",
    "measure_cost",
    "measure_plan",
    "measure_speed",
    "plan_batches",
    "process_age_seconds",
    "recv_from_any",
    "register",
    "stage_times",
    "thread_cpu_seconds",
    "weighted_allreduce_hook",
]


def register() -> None:
    """Registers "kaitian" once; `devices` exists from torch 2.1 on (1.13 takes name and creator).

    Also the package's "torch.distributed.backends" entry point, through which torch versions that
    have them find the backend without an explicit `import kaitian`.
    """
    if BACKEND_NAME.upper() in getattr(dist.Backend, "_plugins", {}):
        return
    if "devices" in inspect.signature(dist.Backend.register_backend).parameters:
        dist.Backend.register_backend(BACKEND_NAME, create_process_group, devices=["cpu", "cuda"])
    else:
        dist.Backend.register_backend(BACKEND_NAME, create_process_group)


register()
