"""What the benchmarks print about the machine they ran on (shared by every benchmark script)."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def device_name(device: str | torch.device) -> str:
    """'cuda (<GPU name>)' or 'cpu (<CPU model>, <n> logical cores)'."""
    if torch.device(device).type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(torch.device(device))})"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu ({model}, {os.cpu_count()} logical cores)"
