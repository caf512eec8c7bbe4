"""Peak memory of a measured block: host peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs`` where Linux allows it, else the process-wide high-water mark) and, for
torch on CUDA, the peak of ``torch.cuda.max_memory_allocated`` (None on the CPU)."""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


def _proc_status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (``VmHWM``: peak RSS, ``VmRSS``: current) in MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_host_peak() -> bool:
    """Reset the kernel's RSS high-water mark of this process; False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_mb("VmHWM") is not None


def _ru_maxrss_mb() -> float:
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


@dataclass
class PeakMemory:
    """Host peak RSS (MB; ``host_start_mb``: the RSS when the block began, so the block's own
    growth is the difference) and device peak (MB, torch's CUDA allocator; None on CPU)."""

    host_mb: float | None = None
    host_start_mb: float | None = None
    host_scope: str = "variant"
    device_mb: float | None = None
    device_method: str | None = None

    def to_dict(self) -> dict[str, Any]:
        def mb(v: float | None) -> float | None:
            return None if v is None else round(v, 1)

        return {"host_peak_rss_mb": mb(self.host_mb), "host_rss_start_mb": mb(self.host_start_mb),
                "host_peak_scope": self.host_scope, "device_peak_mb": mb(self.device_mb),
                "device_method": self.device_method}  # fmt: skip


@contextmanager
def peak_memory(device: str) -> Iterator[PeakMemory]:
    """Measure the peak host RSS (and torch CUDA allocation on ``device`` cuda) inside the block."""
    import torch

    mem = PeakMemory()
    scoped = _reset_host_peak()
    mem.host_start_mb = _proc_status_mb("VmRSS")
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield mem
    hwm = _proc_status_mb("VmHWM") if scoped else None
    mem.host_mb, mem.host_scope = (hwm, "variant") if hwm is not None else (_ru_maxrss_mb(),
                                                                            "process")
    if cuda:
        torch.cuda.synchronize()
        mem.device_mb = torch.cuda.max_memory_allocated() / 2**20
        mem.device_method = "torch.cuda.max_memory_allocated (torch allocations only)"
