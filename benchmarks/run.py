"""Run every benchmark script, one after another, and summarize.

Each script in benchmarks/ (all but run.py and common.py) runs as `python -m benchmarks.NAME --quick`
(or `--full`) in its own process, so one failure does not stop the rest; their tables stream to the
terminal. Writes results/run.json (seconds and exit status per script) and results/run.md (every
script's printed tables, the text for the README's benchmark section).

    python -m benchmarks.run --quick                    # everything, small settings (< 20 min on 2 cores)
    python -m benchmarks.run --full                     # everything, full settings
    python -m benchmarks.run --only probe_overhead --only matmul_peak
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common

HERE = Path(__file__).resolve().parent
NOT_SCRIPTS = {"__init__", "common", "run"}
ORDER = ("matmul_peak", "probe_overhead", "dataset_scan")  # cheap yardsticks first; the rest alphabetically


def discover() -> list[str]:
    """Names of the benchmark scripts, yardsticks first.

    Example:
        >>> "matmul_peak" in discover()
        True
    """
    names = sorted(p.stem for p in HERE.glob("*.py") if p.stem not in NOT_SCRIPTS and not p.stem.startswith("_"))
    return [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]


def run_one(name: str, flags: list[str], timeout: float | None) -> tuple[int, float, str]:
    """Run one script, echoing its output; returns (exit status, seconds, output)."""
    command = [sys.executable, "-m", f"benchmarks.{name}", *flags]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "TQDM_DISABLE": "1"}
    print(f"\n### {name}: {' '.join(['python', '-m', f'benchmarks.{name}', *flags])}", flush=True)
    start = time.perf_counter()
    lines: list[str] = []
    process = subprocess.Popen(command, cwd=HERE.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if timeout is not None and time.perf_counter() - start > timeout:
                raise subprocess.TimeoutExpired(command, timeout)
            print(line, end="", flush=True)
            lines.append(line)
        status = process.wait()
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        lines.append(f"\n(timed out after {timeout:.0f} s)\n")
        status = -9
    except KeyboardInterrupt:
        process.kill()
        raise
    return status, time.perf_counter() - start, "".join(lines)


def _tables(output: str) -> str:
    """The tables (and their titles) out of a script's output, without log noise."""
    keep = [line for line in output.splitlines() if line.startswith("## ") or " | " in line or set(line.strip()) <= {"-", "|", " "}]
    return "\n".join(keep).strip()


def main(argv: list[str] | None = None) -> dict:
    """Run the scripts; print a summary table; write results/run.json and results/run.md."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--only", action="append", help="run only this script (repeatable)")
    p.add_argument("--skip", action="append", default=[], help="skip this script (repeatable)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per script before it is stopped")
    args = p.parse_args(argv)
    names = [n for n in (args.only or discover()) if n not in args.skip]
    unknown = [n for n in names if not (HERE / f"{n}.py").exists()]
    if unknown:
        p.error(f"no such benchmark script: {', '.join(unknown)}; available: {', '.join(discover())}")
    flags = ["--full" if args.full else "--quick", "--results-dir", str(args.results_dir)]
    started = time.perf_counter()
    rows, sections = [], []
    for name in names:
        status, seconds, output = run_one(name, flags, args.timeout)
        rows.append({"script": name, "seconds": round(seconds, 1), "ok": status == 0, "exit status": status})
        command = f"python -m benchmarks.{name} {'--full' if args.full else '--quick'}"
        sections.append(f"### {name}\n\n`{command}` ({seconds:.0f} s)\n\n{_tables(output) or '(no table; see the log)'}\n")
    total = time.perf_counter() - started
    rows.append({"script": "total", "seconds": round(total, 1), "ok": all(r["ok"] for r in rows), "exit status": None})
    common.print_table(rows, title=f"benchmarks.run ({'full' if args.full else 'quick'})")
    machine = common.machine_info()
    header = (f"Machine: {machine['cpu_count']} x {machine['cpu_model']}, torch {machine['torch_version']} "
              f"({machine['torch_threads']} threads, OMP_WAIT_POLICY={machine['omp_wait_policy']}), {machine['device']}; "
              f"`python -m benchmarks.run {'--full' if args.full else '--quick'}` took {total / 60:.1f} min.\n")
    Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.results_dir) / "run.md").write_text(header + "\n" + "\n".join(sections))
    common.write_result("run", {"scripts": rows, "total_seconds": total}, settings={"scripts": names, "flags": flags},
                        results_dir=args.results_dir, started=started)
    if not all(r["ok"] for r in rows):
        raise SystemExit(1)
    return {"rows": rows}


if __name__ == "__main__":
    main()
