"""`python -m bench` (what `make bench` runs): the strategy benchmark, then the proxy benchmark.

Each rewrites its own section of docs/benchmarks.md. Arguments go to the proxy benchmark
(`python -m bench --quick`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    status = 0
    if (Path(__file__).with_name("strategies.py")).exists():
        status = subprocess.call([sys.executable, "-m", "bench.strategies"], cwd=Path(__file__).parent.parent)
    from bench import proxy

    command = "make bench" if not argv else " ".join(["python -m bench", *argv])
    return proxy.main(argv, command=command) or status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
