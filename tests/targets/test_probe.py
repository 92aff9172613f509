"""The probe scores targets like a manual computation, stops early and never leaks hooks."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dreamy.targets import Probe, TargetError, list_sites, parse, score_map


class Counted(nn.Module):
    """Wraps a module and counts how often it ran."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


class Pair(nn.Module):
    def forward(self, x):
        return x * 2, x * 3


def small_cnn() -> nn.Sequential:
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        Counted(nn.Conv2d(4, 6, 3, padding=1)), nn.ReLU(),
        Counted(nn.Flatten()), Counted(nn.Linear(6 * 8 * 8, 5)),
    )
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.2
        p.requires_grad_(False)
    return net


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture
def net():
    return small_cnn()


@pytest.fixture
def images():
    return torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_scores_equal_manual_computation(net, images):
    probe = Probe(net, ["1:2", "0:1/center", "3:5/max", "0.5*1:0-2*3:1/sum", "5:4", "1"])
    result = probe(images)
    a1 = torch.relu(net[0](images))
    a3 = torch.relu(net[2](a1))
    logits = net[5](net[4](a3))
    expected = torch.stack(
        [
            a1[:, 2].mean(dim=(1, 2)),
            net[0](images)[:, 1, 4, 4],
            a3[:, 5].flatten(1).max(dim=1).values,
            0.5 * a1[:, 0].mean(dim=(1, 2)) - 2 * a3[:, 1].sum(dim=(1, 2)),
            logits[:, 4],
            a1.mean(dim=(1, 2, 3)),
        ],
        dim=1,
    )
    torch.testing.assert_close(result.scores, expected)
    assert result.terms[3].shape == (3, 2)


def test_scores_carry_gradients_to_the_input(net, images):
    images = images.clone().requires_grad_(True)
    Probe(net, ["3:1"])(images).scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_early_exit_skips_later_layers(net, images):
    Probe(net, ["1:0"])(images)
    assert (net[2].calls, net[5].calls) == (0, 0)
    Probe(net, ["3:0"])(images)
    assert (net[2].calls, net[4].calls, net[5].calls) == (1, 0, 0)


def test_logits_and_need_output_run_the_whole_model(net, images):
    result = Probe(net, ["logits:2", "1:0"])(images)
    assert net[5].calls == 1
    torch.testing.assert_close(result.scores[:, 0], net(images)[:, 2])
    out = Probe(net, ["1:0"])(images, need_output=True).output
    assert out.shape == (3, 5) and net[5].calls == 3


def test_per_row_scoring(net, images):
    probe = Probe(net, ["3:0", "3:1", "logits:4"])
    result = probe(images, row_targets=[2, 0, 1])
    expected = torch.stack([result.scores[0, 2], result.scores[1, 0], result.scores[2, 1]])
    torch.testing.assert_close(result.row_scores, expected)
    with pytest.raises(TargetError, match="one target index per row"):
        probe(images, row_targets=[0, 1])
    with pytest.raises(TargetError, match="0..2"):
        probe(images, row_targets=[0, 1, 3])


def test_no_hook_remains_after_an_exception(net, images):
    probe = Probe(net, ["3:0", "logits:1"])
    with pytest.raises(RuntimeError):
        probe(torch.rand(3, 5, 8, 8))  # wrong channel count: the first conv raises
    assert all_hooks(net) == 0
    with pytest.raises(TargetError, match="valid units are 0..5"):
        Probe(net, ["3:99"])(images)  # raised inside the hook
    assert all_hooks(net) == 0
    Probe(net, ["3:0"])(images)
    assert all_hooks(net) == 0


def test_no_hook_remains_when_hooking_itself_is_interrupted(net, images, monkeypatch):
    # a Ctrl-C or SIGTERM that lands while the probe registers its hooks (after the first, before the second)
    from dreamy.targets.probe import capture_raw
    from dreamy.targets.spec import Site

    real = nn.Module.register_forward_hook
    calls = []

    def interrupted_on_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "register_forward_hook", interrupted_on_second)
    with pytest.raises(KeyboardInterrupt):
        Probe(net, ["1:0", "3:0"])(images)
    assert all_hooks(net) == 0
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        capture_raw(net, [Site("1"), Site("3")], (images,), {})
    assert all_hooks(net) == 0


def test_unknown_site_suggests_close_names():
    model = nn.Module()
    model.layer4 = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(TargetError) as info:
        Probe(model, ["layer4.2:0"])
    message = str(info.value)
    assert "unknown site 'layer4.2'" in message and "'layer4.1'" in message and "dream sites" in message


class WithUnused(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        return self.net(x)


def test_site_that_never_runs_is_reported(net, images):
    with pytest.raises(TargetError, match="never ran"):
        Probe(WithUnused(net), ["unused:0"])(images)


def test_module_input_and_tuple_element(images):
    net = nn.Sequential(nn.Conv2d(3, 4, 1), Pair())
    result = Probe(net, ["1@in:2", "1[1]:3", "1:3"])(images, need_output=True)
    conv = net[0](images)
    torch.testing.assert_close(result.scores[:, 0], conv[:, 2].mean(dim=(1, 2)))
    torch.testing.assert_close(result.scores[:, 1], 3 * conv[:, 3].mean(dim=(1, 2)))
    torch.testing.assert_close(result.scores[:, 2], 2 * conv[:, 3].mean(dim=(1, 2)))
    with pytest.raises(TargetError, match="valid indices are 0..1"):
        Probe(net, ["1[2]:0"])(images)


def test_sequence_reductions():
    net = nn.Sequential(nn.Linear(4, 6))
    x = torch.randn(2, 5, 4)
    acts = net(x)
    last = Probe(net, ["0:3"], sequence_reduce="pos=-1")(x).scores[:, 0]
    torch.testing.assert_close(last, acts[:, -1, 3])
    mean = Probe(net, ["0:3"])(x).scores[:, 0]
    torch.testing.assert_close(mean, acts[:, :, 3].mean(dim=1))
    first = Probe(net, ["0:3/pos=0"], sequence_reduce="pos=-1")(x).scores[:, 0]
    torch.testing.assert_close(first, acts[:, 0, 3])
    with pytest.raises(TargetError, match="pos=9 out of range"):
        Probe(net, ["0:3/pos=9"])(x)


def test_direction_files(tmp_path, net, images):
    vec = torch.randn(6)
    torch.save({"w": vec}, tmp_path / "v.pt")
    np.save(tmp_path / "v.npy", vec.numpy())
    np.savez(tmp_path / "v.npz", w=vec.numpy(), other=vec.numpy())
    save_file({"w": vec}, str(tmp_path / "v.safetensors"))
    torch.save(torch.stack([vec * 0, vec]), tmp_path / "rows.pt")
    specs = [f"3:dir={tmp_path}/v.pt#w", f"3:dir={tmp_path}/v.npy", f"3:dir={tmp_path}/v.npz#w",
             f"3:dir={tmp_path}/v.safetensors", f"3:dir={tmp_path}/rows.pt#1"]
    result = Probe(net, specs)(images, keep_activations=True)
    a3 = result.activations["3"]
    expected = (a3.movedim(1, -1) @ vec).mean(dim=(1, 2))
    for j in range(len(specs)):
        torch.testing.assert_close(result.scores[:, j], expected)
    with pytest.raises(TargetError, match="pick one with '#KEY'"):
        Probe(net, [f"3:dir={tmp_path}/v.npz"])
    with pytest.raises(TargetError, match="does not exist"):
        Probe(net, [f"3:dir={tmp_path}/missing.pt"])
    torch.save(torch.randn(4), tmp_path / "short.pt")
    with pytest.raises(TargetError, match="has 4 values but site '3' has 6"):
        Probe(net, [f"3:dir={tmp_path}/short.pt"])(images)


def test_sae_feature_matches_manual_encoder(tmp_path):
    gen = torch.Generator().manual_seed(3)
    w_enc, b_enc, b_dec = torch.randn(6, 10, generator=gen), torch.randn(10, generator=gen), torch.randn(6, generator=gen)
    save_file({"W_enc": w_enc, "b_enc": b_enc, "b_dec": b_dec}, str(tmp_path / "sae.safetensors"))
    net = nn.Sequential(nn.Linear(4, 6))
    x = torch.randn(8, 4, requires_grad=True)
    score = Probe(net, [f"0:sae={tmp_path}/sae.safetensors#7"])(x).scores[:, 0]
    expected = torch.relu((net(x) - b_dec) @ w_enc[:, 7] + b_enc[7])
    torch.testing.assert_close(score, expected)
    score.sum().backward()  # straight-through: inactive rows still get a gradient
    assert (x.grad.abs().sum(dim=1) > 0).all()
    with pytest.raises(TargetError, match="valid 0..9"):
        Probe(net, [f"0:sae={tmp_path}/sae.safetensors#10"])


def test_score_map_and_list_sites(net, images):
    result = Probe(net, ["1:2"])(images, keep_activations=True)
    mapped = score_map("1:2-0.5*1:1", result.activations)
    a1 = result.activations["1"]
    torch.testing.assert_close(mapped, a1[:, 2] - 0.5 * a1[:, 1])
    sites = dict(list_sites(net, images))
    assert sites["0"] == (3, 4, 8, 8) and sites["5.inner"] == (3, 5) and sites["logits"] == (3, 5)
    assert all_hooks(net) == 0


def test_many_targets_share_one_hook_per_site(net, images):
    probe = Probe(net, [f"3:{i}" for i in range(6)] + ["3:0-1:1"])
    assert len(probe.sites) == 2
    assert probe(images).scores.shape == (3, 7)
    assert [str(t) for t in probe.targets][-1] == str(parse("3:0-1:1"))


def test_logprobs_site_is_the_log_softmax_of_the_output(net, images):
    logits = net(images)
    result = Probe(net, ["logprobs:2", "logits:2-0.5*logprobs:1"])(images)
    expected = logits.log_softmax(dim=-1)
    torch.testing.assert_close(result.scores[:, 0], expected[:, 2])
    torch.testing.assert_close(result.scores[:, 1], logits[:, 2] - 0.5 * expected[:, 1])
    assert str(parse("logprobs:2")) == "logprobs:2" and parse("logprobs:2").reads_logits
    assert dict(list_sites(net, images))["logprobs"] == (images.shape[0], 5)


def test_logprobs_at_one_position_of_a_sequence_equals_the_full_log_softmax():
    net = nn.Sequential(nn.Linear(4, 7))
    tokens = torch.randn(2, 5, 4)
    full = net(tokens).log_softmax(dim=-1)
    result = Probe(net, ["logprobs:3", "logprobs:3/pos=1", "logprobs:3/mean"], sequence_reduce="pos=-1")(tokens)
    torch.testing.assert_close(result.scores[:, 0], full[:, -1, 3])
    torch.testing.assert_close(result.scores[:, 1], full[:, 1, 3])
    torch.testing.assert_close(result.scores[:, 2], full[:, :, 3].mean(dim=1))
    with pytest.raises(TargetError, match="pos=9 out of range"):
        Probe(net, ["logprobs:3/pos=9"])(tokens)


def test_reads_last_position_only_follows_each_terms_reduction():
    net = nn.Sequential(nn.Linear(4, 6))
    probe = Probe(net, ["0:1", "0:1/pos=-1-0:2/mean", "logits:3"], sequence_reduce="pos=-1")
    assert [probe.reads_last_position_only(j) for j in range(3)] == [True, False, True]
    assert not probe.reads_last_position_only()
    assert not Probe(net, ["0:1"]).reads_last_position_only()  # default sequence reduction is the mean
    assert Probe(net, ["0:1/pos=-1", "logits:2/pos=-1"]).reads_last_position_only()


class Meet(nn.Module):
    """Holds each forward until `parties` forwards (threads) are inside the model at once; then the forward of a
    batch of `last_rows` rows waits until the other one has passed `Passed` (or 2 s), so the other runs on first."""

    def __init__(self, parties: int, last_rows: int | None = None, passed=None) -> None:
        super().__init__()
        import threading

        self.barrier = threading.Barrier(parties, timeout=20)
        self.last_rows, self.passed = last_rows, passed

    def forward(self, x):
        self.barrier.wait()
        if self.passed is not None and x.shape[0] == self.last_rows:
            self.passed.wait(timeout=2)
        return x


class Passed(nn.Module):
    """Marks that a forward of any batch but `last_rows` rows has run through it."""

    def __init__(self, last_rows: int, event) -> None:
        super().__init__()
        self.last_rows, self.event = last_rows, event

    def forward(self, x):
        if x.shape[0] != self.last_rows:
            self.event.set()
        return x


def _in_threads(n, work):
    import threading

    results, errors = {}, []

    def run(i):
        try:
            results[i] = work(i)
        except Exception as error:  # handed to the test thread
            errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def test_threads_probing_one_model_at_once_each_see_their_own_forward():
    import threading

    gen = torch.Generator().manual_seed(0)
    passed = threading.Event()
    # both calls have hooked the model before either forward goes on; the 5-row forward then reaches every site
    # first, while the 2-row call's hooks (on the same modules) are registered and its own forward waits
    net = nn.Sequential(nn.Linear(4, 6), Meet(2, last_rows=2, passed=passed), nn.Linear(6, 3), nn.ReLU(),
                        nn.Linear(3, 2), Passed(2, passed)).requires_grad_(False)
    probes = [Probe(net, ["2:1"]), Probe(net, ["2:1", "4:0"])]  # both stop early, after different sites
    inputs = [torch.randn(2, 4, generator=gen), torch.randn(5, 4, generator=gen)]
    results, errors = _in_threads(2, lambda i: probes[i](inputs[i]).scores)
    assert errors == []
    net[1] = nn.Identity()
    for i in range(2):
        torch.testing.assert_close(results[i], probes[i](inputs[i]).scores)


def test_threads_listing_sites_at_once_each_see_their_own_input():
    net = nn.Sequential(nn.Linear(4, 6), Meet(2), nn.Linear(6, 3)).requires_grad_(False)
    results, errors = _in_threads(2, lambda i: list_sites(net, torch.zeros(1 + i, 4)))
    assert errors == []
    assert results[0][0] == ("0", (1, 6)) and results[1][0] == ("0", (2, 6))


@pytest.mark.parametrize("scoring", ["grouped", "packed"])
def test_threads_running_epo_on_one_model(tiny_lm, scoring):
    from dreamy.language import epo

    def search(i):
        return [r.to_record()["frontier"] for r in epo(tiny_lm, [f"model.layers.0:{i}", "model.layers.1:3"], iters=4,
                                                         n_tokens=3, population=2, children=8, scoring=scoring,
                                                         progress=False)]

    results, errors = _in_threads(3, search)
    assert errors == []
    assert all(results[i] == search(i) for i in range(3))
