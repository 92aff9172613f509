"""The gradient pass replayed as a CUDA graph equals the eager pass; elsewhere no graph is made."""

import pytest
import torch

from dreamy.language.graphs import GradientGraph, bucket_rows
from dreamy.language.search import SearchSetup

TARGET = "model.layers.1.mlp.down_proj:3"


def test_rows_are_padded_to_powers_of_two_up_to_a_limit():
    assert [bucket_rows(n) for n in (1, 2, 3, 5, 32)] == [1, 2, 4, 8, 32]
    assert bucket_rows(33) is None


def test_padding_rows_repeat_the_first_row():
    graph = GradientGraph(lambda *a: None, 4, 3, torch.device("cpu"))
    graph._load(torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([0.5, 2.0]), torch.tensor([0, 1]))
    assert graph.spans.tolist() == [[1, 2, 3], [4, 5, 6], [1, 2, 3], [1, 2, 3]]
    assert graph.fluency_weights.tolist() == [0.5, 2.0, 0.5, 0.5] and graph.owners.tolist() == [0, 1, 0, 0]


def test_no_graph_off_cuda(tiny_lm):
    setup = SearchSetup.build(tiny_lm, TARGET, n_tokens=4)
    setup.top_tokens_and_states(torch.randint(5, 100, (3, 4)), torch.tensor([0.1, 1.0, 10.0]), 4)
    assert setup._graphs == {}


def _same_search_outputs(graphed, eager, device):
    gen = torch.Generator().manual_seed(0)
    for n in (3, 4, 1, 3):  # buckets 4, 4, 1, 4: captures once per bucket, then replays
        spans = torch.randint(5, 150, (n, 6), generator=gen).to(device)
        weights = torch.rand(n, generator=gen) * 10
        top_g, states_g = graphed.top_tokens_and_states(spans, weights, 8)
        top_e, states_e = eager.top_tokens_and_states(spans, weights, 8)
        # padded rows change the batch shape, so near-ties may rank differently in the last bits
        assert (top_g == top_e).float().mean() > 0.9
        torch.testing.assert_close(states_g.logprobs, states_e.logprobs, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(states_g.token_xent, states_e.token_xent, rtol=1e-4, atol=1e-4)
        for (kg, vg), (ke, ve) in zip(states_g.layers, states_e.layers):
            torch.testing.assert_close(kg, ke, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(vg, ve, rtol=1e-4, atol=1e-4)
    assert set(graphed._graphs) == {(4, 8), (1, 8)}
    assert not any(graph.failed for graph in graphed._graphs.values())


def test_graph_outputs_are_read_out_like_the_eager_pass(tiny_lm, monkeypatch):
    # on the CPU: a stand-in "graph" whose replay reruns the pass into the same static buffers
    def capture(self):
        self.outputs = self.run(self.spans, self.fluency_weights, self.owners)
        replay = lambda: [o.copy_(n) for o, n in zip(self.outputs, self.run(self.spans, self.fluency_weights, self.owners))]
        self.graph = type("Replay", (), {"replay": staticmethod(replay)})()

    monkeypatch.setattr(GradientGraph, "_capture", capture)
    monkeypatch.setattr(SearchSetup, "_graph_device", staticmethod(lambda device: True))
    graphed = SearchSetup.build(tiny_lm, TARGET, n_tokens=6)
    eager = SearchSetup.build(tiny_lm, TARGET, n_tokens=6)
    eager.cuda_graphs = False
    _same_search_outputs(graphed, eager, "cpu")


def test_a_failed_capture_falls_back_to_the_eager_pass(tiny_lm, monkeypatch, caplog):
    def broken(self):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(GradientGraph, "_capture", broken)
    monkeypatch.setattr(SearchSetup, "_graph_device", staticmethod(lambda device: True))
    setup = SearchSetup.build(tiny_lm, TARGET, n_tokens=6)
    top, states = setup.top_tokens_and_states(torch.randint(5, 150, (2, 6)), torch.tensor([1.0, 2.0]), 8)
    assert top.shape == (2, 6, 8) and states.n_parents == 2
    assert all(graph.failed for graph in setup._graphs.values()) and "running it eagerly" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_replayed_gradient_pass_equals_the_eager_one():
    from dreamy.models import load

    lm = load("tiny:lm", device="cuda")
    graphed = SearchSetup.build(lm, TARGET, n_tokens=6)
    eager = SearchSetup.build(lm, TARGET, n_tokens=6)
    eager.cuda_graphs = False
    _same_search_outputs(graphed, eager, "cuda")
