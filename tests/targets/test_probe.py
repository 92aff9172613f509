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


def test_a_direction_read_with_a_key_reads_the_last_position_only(tmp_path, llama):
    """`dir=FILE#KEY` was taken for an attention-pattern entry (`head=H,key=J`) by its `key`: text maxima then
    ranked whole windows only."""
    torch.save({"v": torch.ones(64)}, tmp_path / "v.pt")
    torch.save(torch.ones(64), tmp_path / "bare.pt")
    probe = Probe(llama, [f"blocks.1.hook_resid_post:dir={tmp_path}/v.pt#v", f"blocks.1.hook_resid_post:dir={tmp_path}/bare.pt",
                          "blocks.1.attn.hook_pattern:head=1,key=0"], sequence_reduce="pos=-1")
    assert [probe.reads_last_position_only(j) for j in range(3)] == [True, True, False]


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


# Units that share a site are read together: a probe of many targets scores each as a probe of that target alone.

def _one_at_a_time(model, specs, *args, **kwargs):
    """Scores and maps of each spec by its own single-target probe."""
    sequence_reduce = kwargs.pop("sequence_reduce", "mean")
    scores, maps = [], []
    for spec in specs:
        probe = Probe(model, [spec], sequence_reduce=sequence_reduce)
        result = probe(*args, keep_activations=True, **kwargs)
        scores.append(result.scores[:, 0])
        maps.append(probe.maps(result.activations)[0])
    return torch.stack(scores, dim=1), maps


def _assert_many_equal_one_at_a_time(model, specs, *args, sequence_reduce="mean", **kwargs):
    probe = Probe(model, specs, sequence_reduce=sequence_reduce)
    result = probe(*args, keep_activations=True, **kwargs)
    scores, maps = _one_at_a_time(model, specs, *args, sequence_reduce=sequence_reduce, **kwargs)
    torch.testing.assert_close(result.scores, scores, atol=1e-5, rtol=1e-5)
    many_maps = probe.maps(result.activations)
    for j in range(len(specs)):
        torch.testing.assert_close(many_maps[j], maps[j], atol=1e-5, rtol=1e-5)
    if len({tuple(m.shape) for m in many_maps}) == 1:
        torch.testing.assert_close(probe.stacked_maps(result.activations), torch.stack(many_maps, dim=-1))
    assert [tuple(t.shape) for t in result.terms] == [(scores.shape[0], len(t.terms)) for t in probe.targets]
    return result


@pytest.fixture(scope="module")
def llama():
    from tests.fixtures import tiny_hf

    return tiny_hf("llama")


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 100, (3, 7), generator=torch.Generator().manual_seed(4))


def test_many_neurons_of_one_site_score_as_each_alone(llama, ids):
    site = "model.layers.1.mlp.down_proj@in"
    specs = [f"{site}:{i}" for i in (5, 0, 63, 5, 17)] + [f"{site}:3/mean", f"{site}:9/max", f"{site}:2/pos=1",
                                                          "model.layers.0:4", site]
    result = _assert_many_equal_one_at_a_time(llama, specs, input_ids=ids, sequence_reduce="pos=-1")
    down_in = result.activations[site]
    torch.testing.assert_close(result.scores[:, 2], down_in[:, -1, 63])
    torch.testing.assert_close(result.scores[:, 6], down_in[:, :, 9].max(dim=1).values)


def test_many_channels_of_one_conv_site_score_as_each_alone(net, images):
    specs = [f"1:{c}" for c in range(4)] + ["1:2/max", "1:3/center", "3:5/sum", "3:0/pos=7", "1:1"]
    result = _assert_many_equal_one_at_a_time(net, specs, images)
    torch.testing.assert_close(result.scores[:, 0], torch.relu(net[0](images))[:, 0].mean(dim=(1, 2)))
    with pytest.raises(TargetError, match="different position shapes"):
        Probe(net, ["1:0", "5:1"]).stacked_maps(Probe(net, ["1:0", "5:1"])(images, keep_activations=True).activations)


@pytest.mark.parametrize("architecture", ["topk", "jumprelu", "relu", "gated"])
def test_many_features_of_one_sae_score_as_each_alone(tmp_path, llama, ids, architecture):
    from dreamy.sae import save
    from tests.sae.helpers import small_sae

    sae = small_sae(architecture, d_in=32, d_sae=24, seed=2)
    save(sae, tmp_path / "sae")
    site = "model.layers.1"
    specs = [f"{site}:sae={tmp_path}/sae#{i}" for i in (3, 0, 23, 7, 3)] + [f"{site}:sae={tmp_path}/sae#5/mean",
                                                                         f"{site}:sae={tmp_path}/sae#11/max"]
    result = _assert_many_equal_one_at_a_time(llama, specs, input_ids=ids, sequence_reduce="pos=-1")
    z = sae.encode(result.activations[site])
    torch.testing.assert_close(result.scores[:, 2], z[:, -1, 23], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.scores[:, 6], z[:, 1:, 11].max(dim=1).values, atol=1e-5, rtol=1e-5)  # not the start token


def test_directions_of_one_file_and_of_several_score_as_each_alone(tmp_path, llama, ids):
    gen = torch.Generator().manual_seed(5)
    torch.save(torch.randn(4, 32, generator=gen), tmp_path / "rows.pt")
    save_file({"a": torch.randn(32, generator=gen), "b": torch.randn(32, generator=gen)}, str(tmp_path / "v.safetensors"))
    site = "model.layers.1"
    specs = [f"{site}:dir={tmp_path}/rows.pt#{r}" for r in range(4)] + [
        f"{site}:dir={tmp_path}/v.safetensors#a", f"{site}:dir={tmp_path}/v.safetensors#b/mean"]
    result = _assert_many_equal_one_at_a_time(llama, specs, input_ids=ids, sequence_reduce="pos=-1")
    rows = torch.load(tmp_path / "rows.pt")
    torch.testing.assert_close(result.scores[:, 3], result.activations[site][:, -1] @ rows[3])


def test_logits_and_logprobs_score_as_each_alone(llama, ids):
    specs = [f"logits:{i}" for i in (1, 99, 50)] + [f"logprobs:{i}" for i in (2, 7)] + ["logprobs:7/mean", "logits:3/max"]
    result = _assert_many_equal_one_at_a_time(llama, specs, input_ids=ids, sequence_reduce="pos=-1")
    logits = llama(input_ids=ids).logits
    torch.testing.assert_close(result.scores[:, 4], logits[:, -1].log_softmax(dim=-1)[:, 7], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.scores[:, 5], logits.log_softmax(dim=-1)[:, 1:, 7].mean(dim=1), atol=1e-5, rtol=1e-5)


def test_attention_head_units_score_as_each_alone(tmp_path, llama, ids):
    torch.save({"v": torch.randn(8, generator=torch.Generator().manual_seed(7))}, tmp_path / "v.pt")
    z, pattern = "blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern"
    specs = [f"{z}:head=3,norm", f"{z}:head=2,1", f"{z}:head=0,dir={tmp_path}/v.pt#v", f"{z}:head=1", f"{z}:head=2,7",
             f"{z}:head=0,norm/mean", f"{z}:head=3,dir={tmp_path}/v.pt#v", f"{pattern}:head=1,key=-1",
             f"{pattern}:head=0,key=2/pos=4", f"{pattern}:head=3,key=0"]
    result = _assert_many_equal_one_at_a_time(llama, specs, input_ids=ids, sequence_reduce="pos=-1")
    head3 = result.activations[z][:, -1, 24:32]
    torch.testing.assert_close(result.scores[:, 0], head3.norm(dim=-1))
    with pytest.raises(TargetError, match="out of range for site 'blocks.1.attn.hook_z head 2' with 8 features"):
        Probe(llama, [f"{z}:head=2,1", f"{z}:head=2,8"])(input_ids=ids)


def test_combinations_score_as_each_alone(tmp_path, llama, ids):
    from dreamy.sae import save
    from tests.sae.helpers import small_sae

    save(small_sae("topk", d_in=32, d_sae=24, seed=3), tmp_path / "sae")
    sae = f"sae={tmp_path}/sae"
    specs = ["0.5*model.layers.1:1-model.layers.2:2", "model.layers.1:1", f"2*model.layers.1:{sae}#4-logits:3",
             f"model.layers.1:{sae}#4+model.layers.1:{sae}#5+0.25*model.layers.1:7/mean", "-model.layers.2:2"]
    result = _assert_many_equal_one_at_a_time(llama, specs, input_ids=ids, sequence_reduce="pos=-1")
    a1, a2 = result.activations["model.layers.1"], result.activations["model.layers.2"]
    torch.testing.assert_close(result.scores[:, 0], 0.5 * a1[:, -1, 1] - a2[:, -1, 2])
    torch.testing.assert_close(result.terms[0], torch.stack([a1[:, -1, 1], a2[:, -1, 2]], dim=1))


def test_many_targets_give_gradients_as_each_alone(llama):
    specs = ["model.layers.1:3", "0.5*model.layers.1:4-model.layers.2:1", "model.layers.1:3/mean"]
    embeds = llama.model.embed_tokens(torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(6)))
    many = embeds.detach().clone().requires_grad_(True)
    Probe(llama, specs, sequence_reduce="pos=-1")(inputs_embeds=many).scores.sum().backward()
    alone = embeds.detach().clone().requires_grad_(True)
    sum(Probe(llama, [spec], sequence_reduce="pos=-1")(inputs_embeds=alone).scores.sum() for spec in specs).backward()
    torch.testing.assert_close(many.grad, alone.grad, atol=1e-5, rtol=1e-5)


SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "to")


def _count_host_syncs(monkeypatch, run):
    """Calls of tensor methods that wait for the device or copy between devices (`to`), while `run()` runs."""
    counts = {name: 0 for name in SYNCING}

    def spy(name, original):
        def wrapper(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)
        return wrapper

    with monkeypatch.context() as patch:
        for name in SYNCING:
            patch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
        run()
    return sum(counts.values())


def test_host_synchronizations_do_not_grow_with_the_number_of_targets(tmp_path, llama, ids, monkeypatch):
    from dreamy.sae import save
    from tests.sae.helpers import small_sae

    save(small_sae("topk", d_in=32, d_sae=64, seed=4), tmp_path / "sae")
    counts = {}
    for n in (1, 64):
        specs = [f"model.layers.1:sae={tmp_path}/sae#{i}" for i in range(n)] + [f"model.layers.1:{i % 32}" for i in range(n)]
        probe = Probe(llama, specs, sequence_reduce="pos=-1")
        probe(input_ids=ids)  # the first call on a device places the unit tensors there
        kept = probe(input_ids=ids, keep_activations=True).activations

        def run():
            probe(input_ids=ids)
            probe(input_ids=ids, row_targets=[0, 1, 0])
            probe.maps(kept)
            probe.stacked_maps(kept)

        counts[n] = _count_host_syncs(monkeypatch, run)
    assert counts[64] == counts[1], counts
