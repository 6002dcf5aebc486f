"""Speed options: which device, which precision, whether to compile. None of them changes the method."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from astroclass.errors import AstroclassError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise AstroclassError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AstroclassError(f"device {name!r} asked for, but no CUDA GPU is available")
    return dev


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX-BF16 tile units (Linux: the amx_bf16 flag in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return any(line.startswith("flags") and " amx_bf16" in line for line in fh)
    except OSError:
        return False


def auto_amp(device: torch.device) -> torch.dtype | None:
    """``amp="auto"``: bf16 autocast on CUDA GPUs with bf16 support and on CPUs with AMX, else fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_amx() else None


def inductor_cache_dir() -> Path:
    """TorchInductor's on-disk cache, one per machine and user: $TORCHINDUCTOR_CACHE_DIR, or
    $XDG_CACHE_HOME/astroclass/inductor."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                                                          / "astroclass" / "inductor"))
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def compiled(model: torch.nn.Module, mode: str | None):
    """``torch.compile(model, mode=mode)`` (None: the eager model). Compiled graphs are cached on disk
    (TorchInductor's FX-graph cache, :func:`inductor_cache_dir`), so an architecture compiles once per
    machine, not once per run; a long-lived grid worker also keeps the compiled model itself."""
    if mode is None:
        return model
    inductor_cache_dir()
    return torch.compile(model, mode=mode, dynamic=False)


def available_memory(device: torch.device) -> int:
    """Bytes free for a new run on ``device``: free GPU memory, or the host's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
