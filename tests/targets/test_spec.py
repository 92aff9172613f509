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


def test_an_overflowing_coefficient_is_refused_and_quoted_as_typed():
    for spec in ["1e999*conv3:1", "conv2:0 - 1e400*conv3:1"]:
        with pytest.raises(SpecError, match="too large") as info:
            parse(spec)
        assert f"spec '{spec}'" in str(info.value) and "inf" not in str(info.value)
    with pytest.raises(SpecError, match="too large"):
        expand("1e999*conv3:0-3")
    for spec in ["nan*conv3:1", "inf*conv3:1", "-inf*conv3:1"]:  # no spelling of a non-finite weight parses
        with pytest.raises(SpecError):
            parse(spec)


@pytest.mark.parametrize("spec", ["a:" + "1" * 5000, "a[" + "1" * 5000 + "]:1", "a:sae=s.pt#" + "9" * 30, "a:1/pos=-" + "1" * 40])
def test_absurdly_long_indices_are_spec_errors(spec):
    with pytest.raises(SpecError, match="too large"):
        parse(spec)


def test_positions_print_canonically():
    assert str(parse("a:1/pos=007")) == "a:1/pos=7" and parse("a:1/pos=-0") == parse("a:1/pos=0")


def test_a_path_with_both_quote_characters_is_refused():
    with pytest.raises(SpecError, match="both"):
        parse("a:dir=x'y\"z.pt")


# Property-based: every string either parses and round-trips, or is refused with the grammar's own SpecError.
# Specs come from random text over the grammar's alphabet and from the grammar itself (README's
# `target := term (("+"|"-") term)*`), the latter checked against the target they were built from.

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dreamy.targets import Term  # noqa: E402

PROPERTY = settings(max_examples=400, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
ALPHABET = "ab019._@[]:/=#'\"+-*eE \t\u00a0\u0663"
WORDS = ["a", "x", "0", "1", "12", ".", "@in", "[0]", "[", "]", ":", "/", "#", "'", '"', "+", "-", "*", " ", "e", "e-5",
         "0.5", ".5", "1e999", "9" * 25, "dir=", "sae=", "mean", "max", "sum", "center", "pos=", "pos=-1", "cls", "tokens=", "tokens=-1", "logits",
         "logprobs", "p.pt", "#w", "p-q", "a b"]
RANDOM_TEXT = st.one_of(st.text(ALPHABET, max_size=30), st.lists(st.sampled_from(WORDS), max_size=12).map("".join))


def assert_round_trips(target):
    text = str(target)
    assert parse(text) == target, text
    assert str(parse(text)) == text


@PROPERTY
@given(RANDOM_TEXT)
def test_random_text_parses_and_round_trips_or_is_a_spec_error(spec):
    try:
        target = parse(spec)
    except SpecError:
        return
    assert_round_trips(target)


@PROPERTY
@given(RANDOM_TEXT.filter(lambda s: "99999" not in s.replace(" ", "")))  # no million-unit ranges
def test_random_text_expands_or_is_a_spec_error(spec):
    try:
        targets = expand(spec)
    except SpecError:
        return
    for target in targets:
        assert_round_trips(target)


NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True)
INDEX = st.integers(0, 10**6)
SAFE_FILE = st.from_regex(r"[A-Za-z0-9_~][A-Za-z0-9_.~/]{0,8}\.pt", fullmatch=True)
ODD_FILE = st.text("ab.-+#/ *:@'", min_size=1, max_size=10).filter(lambda p: not ("'" in p and '"' in p))
REDUCE = st.one_of(st.sampled_from(["mean", "max", "sum", "center", "cls"]), st.integers(-99, 99).map(lambda n: f"pos={n}"),
                   st.integers(-99, 99).map(lambda n: f"tokens={n}"))


@st.composite
def spec_and_target(draw):
    """A spec written the way README documents it, and the target it should parse to."""
    texts, terms = [], []
    for i in range(draw(st.integers(1, 4))):
        sign = -1.0 if draw(st.booleans()) else 1.0
        if i or sign < 0:
            loose = isinstance(terms[-1].unit, (Direction, SAEFeature)) if terms else False
            space = " " if loose or draw(st.booleans()) else ""  # spaces are needed after an unquoted file
            texts.append(f"{space}{'-' if sign < 0 else '+'}{space}")
        coef = 1.0
        if draw(st.booleans()):
            coef = draw(st.floats(0.0, 1e30, allow_nan=False, allow_infinity=False))
            written = draw(st.sampled_from([repr(coef), f"{coef:g}", f"{coef:.3e}"]))
            coef = float(written)
            texts.append(written + draw(st.sampled_from(["*", " * "])))
        if draw(st.integers(0, 4)) == 0:
            path, is_input, index = draw(st.sampled_from(["logits", "logprobs"])), False, None
        else:
            path = ".".join(draw(st.lists(NAME, min_size=1, max_size=3)))
            is_input = draw(st.booleans())
            index = draw(st.none() | st.integers(0, 9))
        site = Site(path, is_input, index)
        texts.append(str(site))
        unit, kind = None, draw(st.integers(0, 4))
        if kind == 1:
            unit = Neuron(draw(INDEX))
            texts.append(f":{unit.index}")
        elif kind in (2, 3):
            quoted = draw(st.booleans())
            file = draw(ODD_FILE if quoted else SAFE_FILE)
            quote = '"' if "'" in file else "'"
            written = f"{quote}{file}{quote}" if quoted else file
            if kind == 2:
                key = draw(st.none() | NAME)
                unit = Direction(file, key)
                texts.append(f":dir={written}" + (f"#{key}" if key is not None else ""))
            else:
                unit = SAEFeature(file, draw(INDEX))
                texts.append(f":sae={written}#{unit.index}")
        reduce = draw(st.none() | REDUCE)
        if reduce is not None:
            texts.append(f"/{reduce}")
        terms.append(Term(sign * coef, site, unit, reduce))
    return "".join(texts), Target(tuple(terms))


@PROPERTY
@given(spec_and_target())
def test_specs_written_by_the_grammar_parse_to_their_target_and_round_trip(case):
    spec, expected = case
    assert parse(spec) == expected
    assert_round_trips(expected)


@pytest.mark.parametrize("spec, reduce", [("blocks.3:7/cls", "cls"), ("blocks.3/tokens=5", "tokens=5"),
                                          ("blocks.3:7/tokens=-1", "tokens=-1"), ("blocks.3:1/cls-blocks.2:1/tokens=0", "cls")])
def test_token_reductions_parse_and_round_trip(spec, reduce):
    target = parse(spec)
    assert target.terms[0].reduce == reduce and str(target) == spec and parse(str(target)) == target


def test_token_reductions_print_canonically_and_bad_ones_point_at_the_slash():
    assert str(parse("b:1/tokens=007")) == "b:1/tokens=7" and parse("b:1/tokens=-0") == parse("b:1/tokens=0")
    with pytest.raises(SpecError, match="cls, pos=N or tokens=N"):
        parse("b:1/token=3")


def test_a_range_of_sae_features_expands_like_a_range_of_neurons():
    assert [str(t) for t in expand("model.layers.9:sae=sae-l9#0-2")] == [  # printed quoted: the path holds '-'
        "model.layers.9:sae='sae-l9'#0", "model.layers.9:sae='sae-l9'#1", "model.layers.9:sae='sae-l9'#2"]
    assert [str(t) for t in expand("x:sae='my sae/dir'#5-6/mean")] == ["x:sae='my sae/dir'#5/mean", "x:sae='my sae/dir'#6/mean"]
    with pytest.raises(SpecError, match="expands to many targets"):
        parse("x:sae=dir#0-2")
    with pytest.raises(SpecError, match="empty unit range"):
        expand("x:sae=dir#5-2")


def test_expand_all_features_of_an_sae_from_its_folder_or_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    from dreamy.sae.files import save
    from dreamy.sae.model import SAE
    from tests.sae.helpers import small_sae

    folder = save(SAE(small_sae("relu", d_in=64, d_sae=6, seed=5).weights()), tmp_path / "sae")
    with_site = expand(f"model.layers.1:sae={folder}#all")
    assert [str(t) for t in with_site] == [str(parse(f"model.layers.1:sae={folder}#{i}")) for i in range(6)]
    assert [str(t) for t in expand(f"sae='{folder}'#all/max")] == [f"sae='{folder}'#{i}/max" for i in range(6)]
    save_file({"W_enc": torch.zeros(4, 3), "b_enc": torch.zeros(3)}, str(tmp_path / "one.safetensors"))
    assert len(expand(f"a:sae={tmp_path / 'one.safetensors'}#all")) == 3
    assert [str(t) for t in expand("a:dir=d.pt#all")] == ["a:dir=d.pt#all"]  # a direction's key named 'all'
    with pytest.raises(ValueError, match="does not exist"):
        expand(f"a:sae={tmp_path / 'missing'}#all")
