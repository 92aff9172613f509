"""Ray across GPUs: one GPU per worker on a CUDA device, one worker per GPU by default, results streamed back."""

from types import SimpleNamespace

import pytest
import torch

from dreamy.runs.on_ray import default_workers, worker_device, worker_options
from dreamy.runs.options import RunOptions
from dreamy.runs.plan import Claim, PreparedRun
from dreamy.vision import DreamConfig


def test_a_cuda_run_asks_one_gpu_per_worker_and_one_worker_per_gpu():
    assert worker_options("cuda") == {"num_cpus": 1, "max_restarts": 0, "num_gpus": 1}
    assert worker_options("cuda:1")["num_gpus"] == 1 and "num_gpus" not in worker_options("cpu")
    assert worker_device("cuda:1") == "cuda"  # Ray sets the worker's CUDA_VISIBLE_DEVICES to its own GPU
    assert default_workers("cuda", gpus=8.0) == 8 and default_workers("cpu") == 2


@pytest.fixture(scope="module")
def gpu_ray():
    """A local Ray cluster that declares two (fake) GPUs, so placement requests can be checked without any."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


class Writer:
    def __init__(self):
        self.records = []

    def write(self, output):
        self.records.extend(output.records)


@pytest.mark.ray
def test_workers_placed_one_per_gpu_stream_their_batches_back(gpu_ray, monkeypatch):
    import dreamy.runs.on_ray as on_ray

    made = []
    real = on_ray.RayRunner

    def runner(model, workers, device, num_gpus=None):  # the run's own placement, loading on the CPU here
        made.append((workers, device, worker_options(device)))
        return real(model, workers, "cpu", num_gpus=worker_options(device).get("num_gpus"))

    monkeypatch.setattr(on_ray, "RayRunner", runner)
    writer, seen = Writer(), []

    def on_batch(ray_runner, k):
        seen.append((k, len(writer.records)))  # each batch is written as it arrives, before the next is seen
        if len(seen) == 1:
            ids = gpu_ray.get([w.gpu_ids.remote() for w in ray_runner.workers])
            assert sorted(map(tuple, ids)) == [("0",), ("1",)]  # each worker holds its own GPU
            assert ray_runner.options["num_gpus"] == 1

    todo = [(k, [f"head:{k}"]) for k in range(4)]
    on_cuda = SimpleNamespace(name="tiny:cnn", device=torch.device("cuda"))  # the driver reads only these
    options = RunOptions(use_ray=True, describe=False, progress=False, on_batch=on_batch)
    prepared = PreparedRun(on_cuda, Claim("tiny:cnn", DreamConfig(steps=1), options, {}), [specs for _, specs in todo])
    on_ray.run_on_ray(prepared, todo, writer)
    assert made == [(2, "cuda", {"num_cpus": 1, "max_restarts": 0, "num_gpus": 1})]  # one worker per GPU
    assert sorted(r["target"] for r in writer.records) == [f"head:{k}" for k in range(4)]
    assert sorted(k for k, _ in seen) == [0, 1, 2, 3] and [n for _, n in seen] == [1, 2, 3, 4]
