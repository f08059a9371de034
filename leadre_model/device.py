"""The one device setting (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``) and what it implies.

Commands take ``--device`` and resolve it here once; code below them receives a
``torch.device`` and never picks one itself. ``auto`` means the first CUDA device when torch
sees one, else the CPU. Torch is imported only where a device is resolved, so settings
(services/common/settings.py) check a spec without loading it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator

from leadre_model.errors import UsageError

if TYPE_CHECKING:
    import torch

_SPEC = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_spec(spec: str) -> str:
    """``spec`` if it names a device kind we run on (UsageError otherwise); availability
    is checked by :func:`resolve_device`, where it is used."""
    spec = spec.strip().lower()
    if not _SPEC.fullmatch(spec):
        raise UsageError(f"device {spec!r}: expected auto, cpu, cuda or cuda:N")
    return spec


DeviceSpec = Annotated[str, AfterValidator(check_device_spec)]


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device ``spec`` names. ``auto``: ``cuda`` when available, else ``cpu``;
    UsageError for a CUDA device this machine does not have."""
    import torch

    spec = check_device_spec(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {spec!r}: torch sees no CUDA device here "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast pays on ``device``: CUDA devices with native bf16 only (on a
    CPU without native bf16, AVX2 only as here, it is ~8x slower than fp32)."""
    import torch

    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def describe(device: torch.device) -> str:
    """A short label for reports and manifests, e.g. ``cuda:0 (NVIDIA H200)`` or ``cpu (2
    threads)``."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({torch.get_num_threads()} threads)"


__all__ = ["DeviceSpec", "bf16_supported", "check_device_spec", "describe", "resolve_device"]
