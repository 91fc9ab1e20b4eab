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
from .process_group import BACKEND_NAME, ProcessGroupKaitian, create_process_group
from .topology import Group, Topology, intra_backends, local_device_kind

__all__ = [
    "BACKEND_NAME",
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
    "Topology",
    "intra_backends",
    "local_device_kind",
    "register",
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
