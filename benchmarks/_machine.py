"""What every benchmark script shares: where the checkout is, what it prints about the machine it ran on (and
its plain-text tables), and how it exits. Importing it makes `gcmae` importable from a checkout without an editable install, so scripts
import it before anything from `gcmae` (this folder is on sys.path when a script is run)."""
from __future__ import annotations

import os
import platform
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if SRC.is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import torch  # noqa: E402


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


def loadavg() -> str:
    """The 1, 5 and 15 min load averages, or '?' where /proc/loadavg cannot be read."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    w = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    out = ["  ".join(str(h).ljust(w[i]) for i, h in enumerate(headers)), "  ".join("-" * x for x in w)]
    out += ["  ".join(str(r[i]).rjust(w[i]) if i else str(r[i]).ljust(w[i]) for i in range(len(headers))) for r in rows]
    return "\n".join(out)


def benchmark_device(script: str, device: str, threads: int = 0) -> torch.device | None:
    """The device to measure on, with `threads` CPU threads when given; None (after saying so) when CUDA is asked
    for and absent, so the script returns without measuring."""
    if threads:
        torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        print(f"{script}: --device cuda but CUDA is not available; nothing measured")
        return None
    return torch.device(device)


def run_report(main: Callable[[], object]) -> None:
    """Run a benchmark's `main` and exit 0 whatever happens: a benchmark is a report, not a test, so a crash is
    printed (traceback + one line) and `run_all.py` goes on with the next script."""
    try:
        main()
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        print(f"benchmark aborted: {type(exc).__name__}: {exc}")
    sys.exit(0)
