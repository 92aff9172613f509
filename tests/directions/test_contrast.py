"""dreamy/directions/contrast.py: the shipped sentiment pairs and the pair-file format."""

import pytest

from dreamy.directions.contrast import contrast_set, read_contrast_pairs


def test_the_sentiment_pairs_are_split_without_overlap():
    pairs = contrast_set("sentiment")
    assert (len(pairs.train), len(pairs.heldout)) == (64, 32)
    train = {text for pair in pairs.train for text in pair}
    heldout = {text for pair in pairs.heldout for text in pair}
    assert not train & heldout
    assert all(pos != neg for pos, neg in pairs.train + pairs.heldout)
    assert pairs.positives("heldout")[3] == pairs.heldout[3][0] and pairs.negatives()[5] == pairs.train[5][1]


def test_a_bad_line_names_its_number(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("# comment\ntrain\tgood\tbad\nvalid\tup\tdown\n")
    with pytest.raises(ValueError, match="pairs.tsv:3: expected split<TAB>positive<TAB>negative"):
        read_contrast_pairs(path)
    path.write_text("heldout\tgood\tbad\n")
    with pytest.raises(ValueError, match="no train pairs"):
        read_contrast_pairs(path)
    with pytest.raises(ValueError, match="unknown split"):
        contrast_set("sentiment").positives("test")
