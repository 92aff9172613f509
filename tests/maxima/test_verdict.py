"""The matched-length verdict: one yardstick, near copies told apart."""

import pytest

from dreamy.maxima.verdict import near_copy_distance, token_edit_distance, verdict_of


def test_edit_distance_counts_insertions_deletions_and_substitutions():
    assert token_edit_distance([1, 2, 3, 4], [1, 2, 3, 4]) == 0
    assert token_edit_distance([1, 2, 3, 4], [2, 3, 4, 5]) == 2  # a shift: one deletion, one insertion
    assert token_edit_distance([], [1, 2]) == 2 and token_edit_distance([9, 9, 9], [1, 2, 3]) == 3


def record(frontier, windows, n=4):
    return {"settings": {"n_tokens": n}, "frontier": frontier, "maxima_matched": windows,
            "maxima": [{"activation": 100.0, "xentropy": 1.0, "token_ids": [0] * 64}]}  # a context window: ignored


def test_the_verdict_compares_with_the_best_matched_window_at_or_below_its_cross_entropy():
    windows = [{"token_ids": [1, 2, 3, 4], "activation": 2.0, "xentropy": 5.0},
               {"token_ids": [5, 6, 7, 8], "activation": 1.0, "xentropy": 3.0}]
    more_active_but_less_fluent = {"token_ids": [9, 9, 9, 9], "activation": 9.0, "xentropy": 5.5}
    assert verdict_of(record([more_active_but_less_fluent], windows))["beats"] is False
    copy = {"token_ids": [1, 2, 3, 9], "activation": 2.5, "xentropy": 5.0}
    verdict = verdict_of(record([more_active_but_less_fluent, copy], windows))
    assert verdict["beats"] and verdict["winner"]["near_copy"] and not verdict["beats_without_copying"]
    assert verdict["ratio"] == pytest.approx(1.25) and verdict["window"]["activation"] == 2.0
    fresh = {"token_ids": [9, 8, 7, 6], "activation": 2.2, "xentropy": 4.0}
    verdict = verdict_of(record([copy, fresh], windows))
    assert verdict["winner"]["activation"] == 2.5 and verdict["beats_without_copying"]
    assert verdict_of({"frontier": [copy], "maxima": windows}) is None  # no matched windows: no verdict
    assert near_copy_distance(12) == 3 and near_copy_distance(1) == 1
