"""Run every benchmark script in this folder (all benchmarks/*.py except this one), one after another.

    .venv/bin/python benchmarks/run_all.py            # full benchmarks
    .venv/bin/python benchmarks/run_all.py --quick    # smoke check: --quick is passed through to each script

Extra arguments after `--` are passed to every script as well (e.g. `-- --device cuda`).
Benchmarks are reports, not tests: this runner always exits 0 and only lists the scripts that crashed.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    unknown = [a for a in argv if a != "--quick"]
    if unknown:
        print(f"run_all.py: unknown arguments {unknown}; usage: run_all.py [--quick] [-- ARGS FOR EVERY SCRIPT]")
        return 2
    flags = (["--quick"] if "--quick" in argv else []) + extra
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_"))
    failed = []
    for script in scripts:
        cmd = [sys.executable, str(script), *flags]
        print(f"\n##### {script.name} {' '.join(flags)}".rstrip(), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"##### {script.name}: exit {rc}, {time.perf_counter() - t0:.1f} s", flush=True)
        if rc != 0:
            failed.append(script.name)
    print(f"\nran {len(scripts)} benchmark(s)" + (f"; exited non-zero: {', '.join(failed)}" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
