"""Speed options: which device, which precision, whether to compile. None of them changes the method."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from astroclass.errors import AstroclassError
from astroclass.parallel import host_available_memory, usable_cores


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


def threads_within_cores() -> int:
    """Lower torch's CPU threads to the cores this process may use, and return them: torch counts the machine's
    cores, not a container's CPU quota, and more threads than the quota allows are throttled in turn. Never raises
    them (``OMP_NUM_THREADS`` or ``torch.set_num_threads`` below the cores stay)."""
    cores = usable_cores()
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
    return torch.get_num_threads()


_M = TypeVar("_M", bound=torch.nn.Module)


def cpu_process_setup() -> bool:
    """What a process computing on the CPU sets before its work: torch's threads within the cores it may use, and
    freed memory kept for reuse (:func:`keep_freed_memory`, whose answer is returned)."""
    threads_within_cores()
    return keep_freed_memory()


def fast_layout(model: _M, fast: dict[str, Any]) -> _M:
    """``model`` in the fast path's layout (``RunConfig.speed``'s ``channels_last`` and ``matmul_1x1``): channels-last
    tensors, and 1x1 convolutions as matrix products (the CPU's)."""
    from astroclass.models import matmul_1x1

    if fast["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    if fast["matmul_1x1"]:
        matmul_1x1(model)
    return model


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Have glibc keep the memory this process frees for reuse: blocks under 2 GiB come from the heap, and its top
    is not handed back to the system. By default glibc gives every block over 128 KiB-32 MiB a mapping of its own
    that ``free`` returns, and PyTorch's CPU allocator keeps no cache, so each training step's large temporaries (a
    batch's activations, a fused group's joined outputs, an optimiser's scratch tensors) are mapped and page-
    faulted afresh: a 100 MB temporary took 5x the time of one whose memory is reused, and a fused 24-run cell
    trained 1.2x faster with the memory kept (``benchmarks/bench_malloc.py``, a 2-core CPU).
    The process's resident memory then stays at its peak (a grid worker is recycled after a bounded number of
    groups).

    Applied once per process; True when in force. Skipped (False) off glibc (macOS, Windows, musl), where the
    environment already tunes glibc's malloc (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
    ``GLIBC_TUNABLES``), and with ``ASTROCLASS_KEEP_FREED_MEMORY=0``."""
    import ctypes
    import platform

    if os.environ.get("ASTROCLASS_KEEP_FREED_MEMORY", "1") == "0" or \
            any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold, limit = -1, -3, 2**31 - 1  # glibc's malloc.h; mallopt takes a C int
    return bool(mallopt(m_mmap_threshold, limit)) and bool(mallopt(m_trim_threshold, limit))


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
    """``torch.compile(model, mode=mode)`` (None, or ``step-graph``: the eager model). Compiled graphs are cached on
    disk (TorchInductor's FX-graph cache, :func:`inductor_cache_dir`), so an architecture compiles once per
    machine, not once per run; a long-lived grid worker also keeps the compiled model itself."""
    if mode is None or mode == STEP_GRAPH:
        return model
    inductor_cache_dir()
    return torch.compile(model, mode=mode, dynamic=False)


STEP_GRAPH = "step-graph"
"""The ``compile`` mode that captures the whole training step as one CUDA graph (:class:`StepGraph`)."""
TORCH_CUDA_GRAPHS = ("reduce-overhead", "max-autotune")
"""The ``compile`` modes under which torch.compile runs the model as CUDA graphs on a GPU."""


class StepGraph:
    """One training step (forward, losses, backward, every run's optimiser step, max-norm, the epoch's running
    totals) as one CUDA graph, replayed for each batch (of every epoch the caller keeps it for: the running totals
    are then zeroed in place, not replaced): one launch per step instead of thousands, and
    no Python in between. ``step(x, y, masks)`` must read nothing else that changes between steps (learning
    rates, averaging decays) and launch no host synchronisation; its optimisers must be ``capturable``.

    Each batch is copied into static input tensors; the first call runs eagerly (on a side stream on a GPU: it
    creates the optimisers' state and gradients and lets cuDNN choose its kernels), the second is captured and
    replayed, and every later one replays. A batch of another shape (an epoch's last, smaller one) runs eagerly.
    Gradients are accumulated in place (autograd does so once they exist), so every tensor the graph touches
    outlives it. Off a GPU, where the caller gives a reason ``why`` not to capture, or after a capture that
    failed, every call runs the step eagerly on the static inputs (the same plumbing, the same maths) and
    ``why`` says why."""

    def __init__(self, step: Callable[..., None], device: torch.device, why: str | None = None):
        self.step = step
        self.why = why if why or device.type == "cuda" else f"CUDA graphs need a CUDA device, not {device.type}"
        self.static: tuple[torch.Tensor, ...] | None = None
        self.graph: Any = None
        self.calls = 0
        self.replays = 0

    def __call__(self, *inputs: torch.Tensor) -> None:
        with warnings.catch_warnings():  # the eager steps of capturable optimisers are expected here
            warnings.filterwarnings("ignore", message=".*capturable=True.*", category=UserWarning)
            self._call(*inputs)

    def _call(self, *inputs: torch.Tensor) -> None:
        if self.static is None:
            self.static = tuple(t.clone() for t in inputs)
        elif any(s.shape != t.shape for s, t in zip(self.static, inputs)):
            self.step(*inputs, graphed=False)
            return
        else:
            for s, t in zip(self.static, inputs):
                s.copy_(t)
        self.calls += 1
        if self.why:
            self.step(*self.static, graphed=False)
        elif self.graph is not None:
            self.graph.replay()
            self.replays += 1
        elif self.calls == 1:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step(*self.static, graphed=False)
            torch.cuda.current_stream().wait_stream(side)
        else:
            graph = torch.cuda.CUDAGraph()
            try:  # thread-local: a streaming reader thread may pin memory meanwhile
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self.step(*self.static, graphed=True)
            except RuntimeError as exc:  # capturing runs nothing: the step is still to be taken, eagerly
                self.why = f"capture failed: {str(exc).splitlines()[0][:200]}"
                self.step(*self.static, graphed=False)
                return
            self.graph = graph
            self.graph.replay()  # capturing records the step; this runs it
            self.replays += 1


def available_memory(device: torch.device, share: int = 1) -> int:
    """Bytes free for a new run on ``device``: free GPU memory, or the host's available RAM. On a GPU that ``share``
    workers train on at once, no more than its total over ``share``: workers that start together all see it free."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(min(free, total // max(1, share)))
    return host_available_memory()
