"""What every benchmark script shares: machine info, timing, FLOP counting, matmul peak, tables, JSON results.

A benchmark script builds its parser with `parser(...)` (which adds `--quick` (the default), `--full`
and `--results-dir`, and on request `--threads`, `--seeds` and `--set KEY=VALUE` settings of a method's config),
reads it with `parse` (which applies `--threads`), measures, prints a table with `print_table`, and writes
`benchmarks/results/NAME.json` with `write_result`; the JSON holds the command, the machine, the date,
the settings and the figures. Timing-only runs use `random_llama` (random-init Llama models of the SmolLM2 shapes).

Example:
    >>> args = parser("demo").parse_args([])
    >>> args.full, str(args.results_dir).endswith("results")
    (False, True)
    >>> print(format_table([{"model": "tiny", "ms": 1.23456}]))
    model | ms
    ----- | -----
    tiny  | 1.235
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent


def parser(description: str, *, threads: bool = False, seeds: bool = False,
           config: type | None = None) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark takes: `--quick` (default), `--full`, `--results-dir`;
    with `threads`, `--threads N` (applied by `parse`); with `seeds`, `--seeds 0,1,...` (default 0); with a
    `config` class (e.g. `EPOConfig`), repeated `--set KEY=VALUE` of its settings (read with `config_of`).

    Example:
        >>> args = parser("demo", threads=True, seeds=True).parse_args(["--threads", "1", "--seeds", "0,2"])
        >>> args.threads, args.seeds
        (1, [0, 2])
    """
    made = argparse.ArgumentParser(description=description)
    size = made.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small settings that finish in minutes (the default)")
    size.add_argument("--full", action="store_true", help="the full-size run")
    made.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where NAME.json goes (default: %(default)s)")
    if threads:
        made.add_argument("--threads", type=int, help="torch CPU threads (1 avoids OpenMP spinning on a loaded machine)")
    if seeds:
        made.add_argument("--seeds", type=seed_list, default=[0], help="comma-separated seeds (default 0)")
    if config is not None:
        made.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                          help=f"a {config.__name__} setting (repeatable), e.g. --set topk=64 "
                               f"--set fluency_weight_range=0.3,30; values read as Python literals, else as text")
    return made


def parse(made: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """`made.parse_args(argv)`, with torch's CPU threads set when `--threads` was given.

    Example:
        >>> parse(parser("demo", threads=True), []).threads is None
        True
    """
    args = made.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return args


def seed_list(text: str) -> list[int]:
    """`"0,1,2"` as `[0, 1, 2]` (the `--seeds` argument type).

    Example:
        >>> seed_list("0, 2")
        [0, 2]
    """
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers such as 0,1,2, got {text!r}") from None


def setting_value(text: str) -> Any:
    """A `--set` value: a Python literal (number, tuple, None, True...) when it reads as one, else the text.

    Example:
        >>> setting_value("64"), setting_value("0.3,30"), setting_value("None"), setting_value("maxima")
        (64, (0.3, 30), None, 'maxima')
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def config_of(cls: Any, sets: Sequence[str], *, flag: str = "--set", **base: Any) -> Any:
    """`cls.build(**base)` with the `--set KEY=VALUE` pairs `sets` applied over `base`: a name the config does not
    have (a typo, an old name) or a value out of range is refused with the config's own message, after `flag`.

    Example:
        >>> from dreamy.language import EPOConfig
        >>> config_of(EPOConfig, ["topk=64"], iters=30).topk
        64
        >>> config_of(EPOConfig, ["topc=64"])
        Traceback (most recent call last):
        ...
        SystemExit: --set: unknown EPOConfig setting 'topc'; did you mean 'topk'? ...
    """
    from dreamy.core.config import ConfigError

    overrides = dict(base)
    for pair in sets:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise SystemExit(f"{flag} {pair!r}: give KEY=VALUE, e.g. topk=64")
        overrides[key.strip()] = setting_value(value.strip())
    try:
        return cls.build(**overrides)
    except ConfigError as error:
        raise SystemExit(f"{flag}: {error}") from None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """CPU count and model, torch threads and version, Python, platform, device, git commit.

    Example:
        >>> machine_info()["device"]
        'cpu'
    """
    device = torch.device(device)
    info = {"cpu_count": os.cpu_count(), "cpu_model": _cpu_model(), "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device": str(device), "git_commit": _git_commit(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["load_average_1min"] = os.getloadavg()[0]  # other work on the machine slows every figure
    except OSError:
        pass
    return info


def command_line() -> str:
    """The command that ran this process, as one would type it (`python -m benchmarks.NAME ...`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", sys.argv[0]]
    return shlex.join(head + sys.argv[1:])


def time_call(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median / min / mean wall seconds of `fn()` over `repeats` runs after `warmup` runs.

    Example:
        >>> time_call(lambda: None, repeats=3)["repeats"]
        3
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "mean_s": statistics.fmean(times), "repeats": repeats}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn()` as counted by torch's `FlopCounterMode` (matmuls, convolutions, attention).

    Example:
        >>> count_flops(lambda: torch.ones(4, 8) @ torch.ones(8, 2))
        128
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def measure_matmul_peak(sizes: Sequence[int] = (512, 1024, 2048), *, dtype: torch.dtype = torch.float32,
                        seconds: float = 1.0, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Achieved FLOP/s of square matmuls of each size (the machine's practical limit), and the best.

    Each size runs for about `seconds`; a matmul of n x n by n x n counts 2 n^3 FLOPs.

    Example:
        >>> peak = measure_matmul_peak((64,), seconds=0.05)
        >>> peak["peak_gflops"] > 0
        True
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    by_size = {}
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        a @ b  # warm-up
        calls, start = 0, time.perf_counter()
        while True:
            a @ b
            calls += 1
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        by_size[str(n)] = 2 * n ** 3 * calls / elapsed / 1e9
    return {"peak_gflops": max(by_size.values()), "gflops_by_size": by_size, "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads()}


def stable_peak(before: dict[str, Any], seconds: float = 1.0) -> dict[str, Any]:
    """Measure the matmul peak again (same sizes) and keep the higher of the two runs.

    On a shared VM one measurement can land in a slow spell and make a workload look faster than the
    machine's limit; the best of a measurement before and one after the workload is the honest yardstick.

    Example:
        >>> first = measure_matmul_peak((64,), seconds=0.05)
        >>> stable_peak(first, seconds=0.05)["peak_gflops"] >= first["peak_gflops"]
        True
    """
    sizes = tuple(int(n) for n in before["gflops_by_size"])
    after = measure_matmul_peak(sizes, seconds=seconds)
    best = max((before, after), key=lambda p: p["peak_gflops"])
    return {**best, "runs_gflops": [before["peak_gflops"], after["peak_gflops"]]}


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def format_table(rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as a plain-text table (Markdown-compatible pipes); floats to 4 significant digits."""
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             " | ".join("-" * w for w in widths)]
    lines += [" | ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def print_table(rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None, title: str | None = None) -> None:
    """Print `format_table(rows, columns)` under an optional title."""
    if title:
        print(f"\n## {title}\n")
    print(format_table(rows, columns), flush=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def write_result(name: str, figures: dict[str, Any], *, settings: dict[str, Any] | None = None,
                 results_dir: str | os.PathLike = RESULTS_DIR, device: str | torch.device = "cpu",
                 started: float | None = None) -> Path:
    """Write `results_dir/NAME.json` atomically: command, machine, date, settings, figures (and seconds since `started`).

    Example:
        >>> import tempfile
        >>> path = write_result("demo", {"x": 1.0}, results_dir=tempfile.mkdtemp())
        >>> sorted(json.loads(path.read_text()))
        ['command', 'date', 'figures', 'machine', 'name', 'settings']
    """
    record = {"name": name, "command": command_line(), "machine": machine_info(device),
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "settings": settings or {}, "figures": figures}
    if started is not None:
        record["seconds"] = time.perf_counter() - started
    directory = Path(results_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    handle, staging = tempfile.mkstemp(prefix=f".{name}.", suffix=".json", dir=directory)
    with os.fdopen(handle, "w") as out:
        json.dump(_jsonable(record), out, indent=1)
    os.replace(staging, path)
    return path


def block_paths(model: torch.nn.Module) -> list[str]:
    """The model's sequence of blocks: the elements of its largest `ModuleList`, else its top-level children.

    Example:
        >>> block_paths(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
        ['0', '1']
    """
    lists = [(name, module) for name, module in model.named_modules() if isinstance(module, torch.nn.ModuleList) and len(module)]
    if lists:
        name, module = max(lists, key=lambda item: len(item[1]))
        return [f"{name}.{i}" for i in range(len(module))]
    return [name for name, _ in model.named_children()]


def mlp_neuron_targets(model: torch.nn.Module, fractions: Sequence[float] = (0.1, 0.45, 0.8), seed: int = 0) -> list[str]:
    """MLP neurons of a Llama-style LM at the given depth fractions, one seeded-random neuron per layer.

    A neuron is the input of `down_proj` (the gated activation), read at the last token by the
    language side: `model.layers.L.mlp.down_proj@in:N`.

    Example:
        >>> from dreamy.models import load
        >>> mlp_neuron_targets(load("tiny:lm").model)
        ['model.layers.0.mlp.down_proj@in:44', 'model.layers.1.mlp.down_proj@in:47']
    """
    layers = model.model.layers
    width = layers[0].mlp.down_proj.in_features
    gen = torch.Generator().manual_seed(seed)
    picks = sorted({min(len(layers) - 1, int(f * len(layers))) for f in fractions})
    return [f"model.layers.{layer}.mlp.down_proj@in:{int(torch.randint(width, (1,), generator=gen))}" for layer in picks]


LLAMA_SHAPES = {  # random-init Llama models for timing-only runs (SmolLM2 shapes)
    "llama-135m-shape": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                             num_key_value_heads=3),
    "llama-1.7b-shape": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                             num_key_value_heads=32),
    "llama-tiny-shape": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2),  # smoke tests only
}


def load_tokenizer(folder: str | os.PathLike) -> Any:
    """The tokenizer saved in `folder` (a Hugging Face tokenizer folder, e.g. the bundled SmolLM2's)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(folder).expanduser()))


def random_llama(shape: str, tokenizer: Any, device: str | torch.device = "cpu") -> Any:
    """A random-init Llama of `LLAMA_SHAPES[shape]` with `tokenizer`'s vocabulary, as a `LoadedModel` named
    "random-init SHAPE" (seeded; for timing only: no weights needed).

    Example:
        >>> from dreamy.models import load
        >>> random_llama("llama-tiny-shape", load("tiny:lm").tokenizer).name
        'random-init llama-tiny-shape'
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from dreamy.models import LoadedModel

    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **LLAMA_SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).eval().requires_grad_(False)
    return LoadedModel(name=f"random-init {shape}", kind="language", model=model, tokenizer=tokenizer)
