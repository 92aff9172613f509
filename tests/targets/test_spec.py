"""Spec strings parse into frozen targets and print back to the same spec."""

import dataclasses

import pytest

from dreamy.targets import Direction, Neuron, SAEFeature, Site, SpecError, Target, expand, parse

ROUND_TRIP = [
    "layer4.1:87",
    "model.layers.5.mlp.down_proj@in:1234",
    "logits:281",
    "0.5*layer3:1-layer4:2",
    "-conv2:3",
    "2*a:1+0.25*b:2-c",
    "blocks.3.attn[0]:5",
    "model.layers.0@in[0]:7/pos=-1",
    "conv2:3/center",
    "conv2:3/max-conv1:0/sum",
    "x:dir=probes/cat.pt#w",
    "x:dir=probe.npy",
    "x:sae=sae/l5.safetensors#12",
    "model.layers.1:dir=v.pt#3 - 0.5*model.layers.1:4",
    "x:dir='my probe-v2.pt'#w",
    "1e-05*conv1:0+conv2",
    "0:3",
]


@pytest.mark.parametrize("spec", ROUND_TRIP)
def test_specs_round_trip(spec):
    target = parse(spec)
    assert str(target) == spec
    assert parse(str(target)) == target


def test_parse_builds_expected_terms():
    target = parse("0.5*layer3:1-layer4@in[1]:2/max")
    first, second = target.terms
    assert first.coef == 0.5 and first.site == Site("layer3") and first.unit == Neuron(1)
    assert second.coef == -1.0 and second.site == Site("layer4", input=True, index=1)
    assert second.unit == Neuron(2) and second.reduce == "max"
    assert target.sites == (Site("layer3"), Site("layer4", True, 1))


def test_whitespace_and_spacing_are_normalized():
    assert str(parse(" 2 * a:1  -  b:2 ")) == "2*a:1-b:2"


def test_targets_are_frozen_and_hashable():
    target = parse("a:1+b:2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.terms = ()
    assert {target: 1}[parse("a:1+b:2")] == 1


def test_file_units():
    assert parse("x:dir=probes/cat.pt#w").terms[0].unit == Direction("probes/cat.pt", "w")
    assert parse("x:sae=s.safetensors#12/mean").terms[0].unit == SAEFeature("s.safetensors", 12)
    assert parse("x:sae=s.safetensors#12/mean").terms[0].reduce == "mean"
    assert parse("x:dir='a-b.pt'").terms[0].unit == Direction("a-b.pt")


def test_logits_site():
    target = parse("logits:281")
    assert target.reads_logits and target.sites[0].is_logits
    assert not parse("layer:1").reads_logits


def test_expand_ranges():
    targets = expand("layer4.1:0-63")
    assert len(targets) == 64
    assert [str(t) for t in targets[:2]] == ["layer4.1:0", "layer4.1:1"]
    assert [str(t) for t in expand("a:2-3/max")] == ["a:2/max", "a:3/max"]
    assert expand("a:1-b:2") == [parse("a:1-b:2")]


def test_range_minus_sequential_child_is_subtraction():
    # '1-2:5' is unit 1 minus site '2' (an nn.Sequential child), not a range
    assert str(parse("0:1-2:5")) == "0:1-2:5"


@pytest.mark.parametrize(
    "spec, position, words",
    [
        ("", 0, "empty"),
        ("layer4:", 7, "expected a unit"),
        ("3*:1", 2, "expected a site"),
        ("a:1 b:2", 4, "joined with '+' or '-'"),
        ("a:1+", 4, "after the operator"),
        ("a@out:1", 1, "'@in'"),
        ("a:1/median", 3, "unknown reduction"),
        ("a:sae=x.pt", 10, "feature index"),
        ("a:1-63", 2, "expand"),
        ("a:0-3+b:1", 0, "single-term"),
        ("a[x]:1", 1, "tuple index"),
    ],
)
def test_malformed_specs_show_the_position(spec, position, words):
    with pytest.raises(SpecError) as info:
        expand(spec) if "single-term" in words else parse(spec)
    assert info.value.position == position
    assert words in str(info.value)
    assert "^" in str(info.value)


def test_empty_range_is_an_error():
    with pytest.raises(SpecError, match="low <= high"):
        expand("a:5-2")


def test_non_string_spec_is_a_type_error():
    with pytest.raises(TypeError, match="must be a string"):
        parse(3)


def test_parse_passes_targets_through():
    target = parse("a:1")
    assert parse(target) is target and isinstance(target, Target)
