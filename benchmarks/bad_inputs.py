"""Measure the table of bad inputs (issue 11): tried / one-line / traceback, and time.

Runs every case of ``tests/test_cli_errors.py`` (the real ``canopy`` command in a
subprocess, tiny random models) and prints one row per case (exit status, lines on
stderr, seconds) and the counts. Run from the repository root with
``PYTHONPATH=$PWD:tests .venv/bin/python benchmarks/bad_inputs.py``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from test_cli_errors import CASES, build_world, run_case, tree_digest


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        world = build_world(Path(tmp))
        one_line = traceback = intact = 0
        times = []
        for name, argv, _ in CASES:
            code, out, err, seconds = run_case(world, argv)
            lines = err.strip().splitlines()
            ok = code == 2 and len(lines) == 1 and "Traceback" not in err
            one_line += ok
            traceback += "Traceback" in err
            intact += tree_digest(world["store"]) == world["digest"]
            times.append(seconds)
            print(f"{name:<32} exit {code}  {len(lines)} line(s)  {seconds:5.2f} s  "
                  f"{lines[-1][:90] if lines else ''}")
        print(f"tried {len(CASES)}, one-line exit 2: {one_line}, traceback: {traceback}, "
              f"store intact after: {intact}/{len(CASES)}; seconds: median "
              f"{sorted(times)[len(times) // 2]:.2f}, max {max(times):.2f}")
    return 0 if one_line == len(CASES) else 1


if __name__ == "__main__":
    sys.exit(main())
