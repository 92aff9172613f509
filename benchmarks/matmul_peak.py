"""How many FLOP/s can this machine's matmul reach? The yardstick for every throughput figure.

    python -m benchmarks.matmul_peak            # sizes 512, 1024 (quick)
    python -m benchmarks.matmul_peak --full     # sizes 256..4096, 3 s each
"""

from __future__ import annotations

import time

import torch

from benchmarks import common


def main(argv: list[str] | None = None) -> dict:
    """Measure fp32 (and bf16 on --full) square-matmul FLOP/s; print a table; write results/matmul_peak.json."""
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    started = time.perf_counter()
    sizes = (256, 512, 1024, 2048, 4096) if args.full else (512, 1024)
    seconds = 3.0 if args.full else 1.0
    dtypes = (torch.float32, torch.bfloat16) if args.full else (torch.float32,)
    rows, figures = [], {}
    for dtype in dtypes:
        peak = common.measure_matmul_peak(sizes, dtype=dtype, seconds=seconds)
        figures[peak["dtype"]] = peak
        rows += [{"dtype": peak["dtype"], "size": int(n), "GFLOP/s": g} for n, g in peak["gflops_by_size"].items()]
    figures["peak_gflops"] = figures["float32"]["peak_gflops"]
    common.print_table(rows, title=f"matmul peak ({torch.get_num_threads()} threads)")
    common.write_result("matmul_peak", figures, settings={"sizes": sizes, "seconds_per_size": seconds},
                        results_dir=args.results_dir, started=started)
    return figures


if __name__ == "__main__":
    main()
