"""dreamy/core/records.py: a record's kind and prompt layout asked in one place; report/ and the enrichment pass
never guess them."""

import re
from pathlib import Path

from dreamy.core.records import RECORD_KEYS, PromptShape, prompt_layout, record_kind

PACKAGE = Path(__file__).resolve().parents[2] / "dreamy"
# a kind read off a record, a kind guessed from its keys, a prompt length read from settings by string
GUESSES = re.compile(r'\.get\("kind"|\["kind"\]|"(?:images|frontier)" in |settings[^\n]*"n_tokens"')


def test_a_record_says_its_kind_and_an_older_one_is_known_by_its_keys():
    assert record_kind({"kind": "image", "frontier": []}) == "image"  # what the record says wins
    assert record_kind({"images": ["a.png"]}) == "image" and record_kind({"frontier": []}) == "prompt"
    assert record_kind({"target": "x:1", "error": "boom"}) is None
    assert record_kind({"target": "x:1"}, default="prompt") == "prompt"
    run = {"model": "tiny:lm", "kind": "prompt", "settings": {"n_tokens": 4, "prefix": "Q:", "suffix": None}}
    assert record_kind(run) == "prompt"


def test_the_prompt_layout_of_a_run_or_record_and_none_for_images():
    assert prompt_layout({"kind": "prompt", "settings": {"n_tokens": 4, "prefix": "Q:"}}) == PromptShape(4, "Q:", "")
    assert prompt_layout({"frontier": [], "settings": {"n_tokens": 2, "suffix": "!"}}) == PromptShape(2, "", "!")
    assert prompt_layout({"kind": "image", "settings": {"n_tokens": 4}}) is None
    assert prompt_layout({"kind": "prompt", "settings": {"n_tokens": "4"}}) is None
    assert prompt_layout({"kind": "prompt", "settings": {"n_tokens": True}}) is None
    assert prompt_layout({"kind": "prompt"}) is None


def test_each_kind_declares_the_common_keys_and_its_own():
    common = {"kind", "target", "model", "method", "activation", "settings", "seed", "plot", "error", "maxima"}
    assert common <= RECORD_KEYS["image"] & RECORD_KEYS["prompt"]
    assert {"images", "judges", "label"} <= RECORD_KEYS["image"] - RECORD_KEYS["prompt"]
    prompt_only = RECORD_KEYS["prompt"] - RECORD_KEYS["image"]
    assert {"frontier", "description", "maxima_matched", "labels", "steering"} <= prompt_only


def test_report_and_the_enrichment_pass_never_guess_a_kind_or_read_n_tokens_by_string():
    files = sorted((PACKAGE / "report").glob("*.py")) + [PACKAGE / "runs" / f"{name}.py" for name in
                                                         ("enrich", "labeling", "describe", "batch")]
    found = [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}" for path in files
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if GUESSES.search(line) and not line.strip().startswith((">>>", "..."))]
    assert not found, found
    # the pattern finds what the old code did
    assert GUESSES.search('is_image = record.get("kind", "image" if "images" in record else None) == "image"')
    assert GUESSES.search('settings = run.get("settings"); n = settings["n_tokens"]')
