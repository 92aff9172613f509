"""Benchmark scripts: each answers one question, prints a table and writes benchmarks/results/NAME.json.

Run them all with `python -m benchmarks.run --quick` (see benchmarks/run.py).

On a small shared machine, OpenMP's default spin-waiting makes torch 5-100x slower whenever another
process competes for the cores; unless you set it yourself, the benchmarks run with
`OMP_WAIT_POLICY=PASSIVE` (set here, before torch is imported, and recorded in every result's machine info).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
