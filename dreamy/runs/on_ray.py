"""Shard dreaming batches over Ray actors (optional extra: `pip install ray`).

Each actor loads the model once and dreams the batches it is handed; the driver hands out one batch
per actor at a time, writes each result as soon as it arrives, and drops an actor that died (its
in-flight batch is lost and is completed by a later `resume` run).

Example:
    >>> import importlib.util
    >>> importlib.util.find_spec("ray") is None or callable(run_on_ray)
    True
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from dreamy.core import stepping
from dreamy.core.config import Config

log = logging.getLogger(__name__)


class RayRunner:
    """The actors of one run; `workers[i]` is an actor handle (tests kill one to simulate a crash)."""

    def __init__(self, model: str, workers: int, device: str) -> None:
        try:
            import ray
        except ImportError as error:
            raise RuntimeError("--ray needs Ray: pip install 'ray' (or the project's [ray] extra)") from error
        from dreamy.runs.batch import dream_batch

        @ray.remote(num_cpus=1, max_restarts=0)
        class Worker:
            def __init__(self, model_name: str, device_name: str) -> None:
                import torch

                from dreamy.models import load

                torch.set_num_threads(1)
                self.loaded = load(model_name, device_name)

            def run(self, specs: list[str], config: Config, describe: bool, starts: dict | None):
                return dream_batch(self.loaded, specs, config, describe=describe, starts=starts)

            def pid(self) -> int:
                import os

                return os.getpid()

        self.ray = ray
        self.workers = [Worker.remote(model, device) for _ in range(workers)]


def run_on_ray(model: str, todo: list[tuple[int, list[str]]], config: Config, writer: Any, *, address: str | None,
               workers: int, device: str, describe: bool, progress: bool,
               on_batch: Callable[[Any, int], None] | None, starts: dict[str, Any] | None = None) -> None:
    """Run `todo` batches (index, specs) of `config`'s run on `workers` Ray actors that each load `model` by name,
    writing results through `writer` (batch k runs with seed `config.seed + k`)."""
    import ray

    from dreamy.runs.plan import batch_config

    if not ray.is_initialized():
        if address:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    runner = RayRunner(model, workers, device)
    queue = list(todo)
    running: dict[Any, tuple[int, int, list[str]]] = {}  # object ref -> (worker, batch index, specs)
    alive = set(range(len(runner.workers)))

    def hand_out(worker: int) -> None:
        if queue and worker in alive:
            k, specs = queue.pop(0)
            mine = {spec: starts[spec] for spec in specs} if starts else None
            running[runner.workers[worker].run.remote(specs, batch_config(config, k), describe, mine)] = (worker, k, specs)

    for worker in sorted(alive):
        hand_out(worker)
    with stepping.progress(len(todo), f"{config.kind} batches on Ray", enabled=progress) as bar:
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            worker, k, specs = running.pop(ref)
            try:
                output = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as error:
                alive.discard(worker)
                log.warning("worker %d died (%s); batch %d (%s) is lost: rerun with --resume to complete it",
                            worker, type(error).__name__, k, ", ".join(specs))
                if not alive:
                    log.error("every Ray worker died; %d batches not run", len(queue))
                    break
                continue
            writer.write(output)
            bar.update(1)
            if on_batch:
                on_batch(runner, k)
            hand_out(worker)
            for other in sorted(alive):  # a worker freed by a lost batch picks up work too
                if other not in {w for w, _, _ in running.values()}:
                    hand_out(other)
