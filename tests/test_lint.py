"""pyflakes over the package, the tests, the benchmarks and the examples: no unused imports or undefined names."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_code_is_pyflakes_clean():
    folders = [str(ROOT / d) for d in ("src", "tests", "benchmarks", "examples") if (ROOT / d).is_dir()]
    run = subprocess.run([sys.executable, "-m", "pyflakes", *folders], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
