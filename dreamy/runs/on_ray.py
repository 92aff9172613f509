"""Shard dreaming batches over Ray actors (optional extra: `pip install ray`).

Each actor loads the model once and dreams the batches it is handed; on a CUDA device each actor asks Ray
for one GPU (`num_gpus=1`, see `worker_options`), so a multi-GPU node runs one worker per GPU (the default
number of workers there, `default_workers`), each on the GPU Ray gives it. Each worker halves a pack that runs
out of its GPU's memory and keeps the smaller size for its later batches (`batch.PackLimit`). The driver hands
out one batch per actor at a time, writes each result as soon as it arrives, and drops an actor that died (its
in-flight batch is lost and is completed by a later `resume` run).

Example:
    >>> import importlib.util
    >>> importlib.util.find_spec("ray") is None or callable(run_on_ray)
    True
"""

from __future__ import annotations

import logging
from typing import Any

from dreamy.core import stepping
from dreamy.core.config import Config
from dreamy.runs.plan import PreparedRun, batch_config

log = logging.getLogger(__name__)


def worker_options(device: str, num_gpus: float | None = None) -> dict[str, Any]:
    """The Ray resources one worker asks for: a CPU, and on a CUDA `device` one GPU (`num_gpus` overrides).

    Example:
        >>> worker_options("cuda:0"), worker_options("cpu")
        ({'num_cpus': 1, 'max_restarts': 0, 'num_gpus': 1}, {'num_cpus': 1, 'max_restarts': 0})
    """
    gpus = (1 if str(device).startswith("cuda") else 0) if num_gpus is None else num_gpus
    return {"num_cpus": 1, "max_restarts": 0, **({"num_gpus": gpus} if gpus else {})}


def worker_device(device: str) -> str:
    """The device a worker loads the model on: a CUDA device is the GPU Ray gave the worker (it sets the
    worker's `CUDA_VISIBLE_DEVICES` to it, so it is the worker's "cuda"); any other device as given.

    Example:
        >>> worker_device("cuda:3"), worker_device("cpu")
        ('cuda', 'cpu')
    """
    return "cuda" if str(device).startswith("cuda") else str(device)


def default_workers(device: str, gpus: float | None = None) -> int:
    """How many workers a run starts when not told: one per GPU on a CUDA device (`gpus`: the cluster's, by
    default this machine's `torch.cuda.device_count()`), else 2.

    Example:
        >>> default_workers("cuda", gpus=8), default_workers("cpu")
        (8, 2)
    """
    if not str(device).startswith("cuda"):
        return 2
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    return max(1, int(gpus))


class RayRunner:
    """The actors of one run; `workers[i]` is an actor handle (tests kill one to simulate a crash). Each asks
    Ray for `worker_options(device, num_gpus)`."""

    def __init__(self, model: str, workers: int, device: str, num_gpus: float | None = None) -> None:
        try:
            import ray
        except ImportError as error:
            raise RuntimeError("--ray needs Ray: pip install 'ray' (or the project's [ray] extra)") from error
        from dreamy.runs.batch import PackLimit, dream_batch

        self.options = worker_options(device, num_gpus)

        @ray.remote(**self.options)
        class Worker:
            def __init__(self, model_name: str, device_name: str) -> None:
                import torch

                from dreamy.models import load

                torch.set_num_threads(1)
                self.loaded = load(model_name, device_name)
                self.limit = PackLimit()  # this worker's device: a pack that ran out of memory lowers it

            def run(self, specs: list[str], config: Config, describe: bool, starts: dict | None):
                return dream_batch(self.loaded, specs, config, describe=describe, starts=starts, limit=self.limit,
                                   model_checked=True)  # the driver checked the model once for the run

            def gpu_ids(self) -> list:
                return [str(gpu) for gpu in ray.get_gpu_ids()]

            def pid(self) -> int:
                import os

                return os.getpid()

        self.ray = ray
        self.workers = [Worker.remote(model, worker_device(device)) for _ in range(workers)]


def run_on_ray(prepared: PreparedRun, todo: list[tuple[int, list[str]]], writer: Any,
               starts: dict[str, Any] | None = None) -> None:
    """Run the `todo` batches (index, specs) of a prepared run (`runs.local.prepare`) on Ray actors that each load
    its model by name, writing each result through `writer` as it arrives (batch k runs with seed
    `config.seed + k`). The run's options give the cluster (`ray_address`; none: a local one) and the number of
    workers (`workers`; None: `default_workers`, one per GPU of the cluster on a CUDA device); `starts` holds
    a seeded search's windows per target.

    Example:
        >>> callable(run_on_ray)
        True
    """
    import ray

    config, options = prepared.config, prepared.options
    address, workers, device = options.ray_address, options.workers, str(prepared.loaded.device)
    if not ray.is_initialized():
        if address:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        else:
            cpus = workers or default_workers(device)
            ray.init(num_cpus=cpus, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    if workers is None:
        gpus = ray.cluster_resources().get("GPU", 0) if str(device).startswith("cuda") else None
        workers = default_workers(device, gpus)
    runner = RayRunner(prepared.loaded.name, workers, device)
    queue = list(todo)
    running: dict[Any, tuple[int, int, list[str]]] = {}  # object ref -> (worker, batch index, specs)
    alive = set(range(len(runner.workers)))

    def hand_out(worker: int) -> None:
        if queue and worker in alive:
            k, specs = queue.pop(0)
            mine = {spec: starts[spec] for spec in specs} if starts else None
            running[runner.workers[worker].run.remote(specs, batch_config(config, k), options.describe_now, mine)] = \
                (worker, k, specs)

    for worker in sorted(alive):
        hand_out(worker)
    with stepping.progress(len(todo), f"{config.kind} batches on {workers} Ray workers{prepared.shown}",
                           enabled=options.progress) as bar:
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
            if options.on_batch:
                options.on_batch(runner, k)
            hand_out(worker)
            for other in sorted(alive):  # a worker freed by a lost batch picks up work too
                if other not in {w for w, _, _ in running.values()}:
                    hand_out(other)
