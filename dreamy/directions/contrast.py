"""Contrast pairs: the same sentence with opposite values of a concept, split into pairs to learn a direction
from and held-out pairs to test it on.

The project ships `sentiment` (dreamy/directions/data/sentiment.tsv: 64 training and 32 held-out pairs of
positive/negative sentences written for dreamy; the held-out pairs use other subjects and other sentiment
words). Any file in the same layout works: one pair per line, `split<TAB>positive<TAB>negative` with split
`train` or `heldout`, lines starting with `#` ignored.

Example:
    >>> pairs = contrast_set("sentiment")
    >>> len(pairs.train), len(pairs.heldout), pairs.heldout[0]
    (64, 32, ('The sequel is a masterpiece.', 'The sequel is a mess.'))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
CONTRAST_SETS = ("sentiment",)
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class ContrastSet:
    """Pairs (positive, negative) for fitting (`train`) and for testing (`heldout`)."""

    name: str
    train: tuple[tuple[str, str], ...]
    heldout: tuple[tuple[str, str], ...]

    def positives(self, split: str = "train") -> list[str]:
        """The positive sentences of `split` (`train` or `heldout`), in pair order.

        Example:
            >>> contrast_set("sentiment").positives("heldout")[:1]
            ['The sequel is a masterpiece.']
        """
        return [pair[0] for pair in self._split(split)]

    def negatives(self, split: str = "train") -> list[str]:
        """The negative sentences of `split`, in pair order.

        Example:
            >>> contrast_set("sentiment").negatives()[:1]
            ['The movie was terrible.']
        """
        return [pair[1] for pair in self._split(split)]

    def _split(self, split: str) -> tuple[tuple[str, str], ...]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use 'train' or 'heldout'")
        return self.train if split == "train" else self.heldout


def read_contrast_pairs(path: "str | os.PathLike", name: str | None = None) -> ContrastSet:
    """The pairs of a file in the layout of the module docstring (`ValueError` naming the line of a bad one).

    Example:
        >>> import tempfile
        >>> file = Path(tempfile.mkdtemp(), "p.tsv"); _ = file.write_text("train\\tyes\\tno\\nheldout\\tup\\tdown\\n")
        >>> read_contrast_pairs(file).heldout
        (('up', 'down'),)
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"contrast pairs '{path}' is not a file; give a .tsv with split<TAB>positive<TAB>negative lines "
                         f"or one of {', '.join(CONTRAST_SETS)}")
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "heldout": []}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 3 or fields[0] not in splits or not fields[1].strip() or not fields[2].strip():
            raise ValueError(f"{path}:{number}: expected split<TAB>positive<TAB>negative with split train or heldout, "
                             f"got {line!r}")
        splits[fields[0]].append((fields[1].strip(), fields[2].strip()))
    if not splits["train"]:
        raise ValueError(f"contrast pairs '{path}' hold no train pairs")
    return ContrastSet(name or path.stem, tuple(splits["train"]), tuple(splits["heldout"]))


def contrast_set(name: "str | os.PathLike" = "sentiment") -> ContrastSet:
    """A shipped contrast set by name (`sentiment`) or a file of pairs.

    Example:
        >>> contrast_set("sentiment").train[0]
        ('The movie was wonderful.', 'The movie was terrible.')
    """
    if str(name) in CONTRAST_SETS:
        return read_contrast_pairs(DATA_DIR / f"{name}.tsv", str(name))
    return read_contrast_pairs(name)


__all__ = ["CONTRAST_SETS", "ContrastSet", "contrast_set", "read_contrast_pairs"]
