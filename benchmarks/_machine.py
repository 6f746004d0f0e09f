"""What every benchmark script shares: what it prints about the machine it ran on, and how it exits."""
from __future__ import annotations

import os
import platform
import sys
import traceback
from collections.abc import Callable
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


def run_report(main: Callable[[], object]) -> None:
    """Run a benchmark's `main` and exit 0 whatever happens: a benchmark is a report, not a test, so a crash is
    printed (traceback + one line) and `run_all.py` goes on with the next script."""
    try:
        main()
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        print(f"benchmark aborted: {type(exc).__name__}: {exc}")
    sys.exit(0)
