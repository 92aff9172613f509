"""Text corpora for dataset maxima and SAE training: Debian's fortunes and King James Bible, your own files, or the
tables researchers use.

`open_text(name)`: `fortunes` (Debian `fortunes`, ~440k words), `bible-kjv` (Debian `bible-kjv`, ~790k words),
any text file or folder (files that are not text are refused: `not_text`), or a table whose `text_column` holds one
document per row (`dreamy.datasets.tables`): a Hugging Face `datasets` folder (`save_to_disk`), a `.jsonl`,
`.parquet` or `.csv` file, or `hf:NAME[:SPLIT]` streamed from the hub. A `max_words` limit becomes part of the
name, so cached maxima of a subset never pass for the whole corpus; files and tables are named with a hash of their
text, so an edited file never passes for the old one. A token budget is `dreamy.datasets.tokens`' job.

Example:
    >>> open_text("fortunes", max_words=1000).name
    'fortunes[:1000w]'
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dreamy.core.files import short_hash
from dreamy.datasets.errors import DatasetError
from dreamy.datasets.tables import HUB_PREFIX, is_table, read_table

log = logging.getLogger(__name__)

FORTUNES_DIR = "/usr/share/games/fortunes"
MAX_INVALID_SHARE = 0.01  # a text file may hold this share of bytes that are not UTF-8 (decoded as U+FFFD)
TEXT_CORPORA = ("fortunes", "bible-kjv", "PATH (a text file or folder)",
                "a table (a datasets folder, .jsonl, .parquet or .csv file)", "hf:NAME[:SPLIT]")


@dataclass(frozen=True)
class TextCorpus:
    """A named text (documents joined by blank lines)."""

    name: str
    text: str

    @property
    def n_words(self) -> int:
        """Whitespace-separated words in the text."""
        return len(self.text.split())

    def limited(self, max_words: int | None) -> "TextCorpus":
        """The first `max_words` words (named accordingly), or self when the corpus is not longer.

        Example:
            >>> TextCorpus("t", "a b\\nc d").limited(3)
            TextCorpus(name='t[:3w]', text='a b\\nc')
        """
        if max_words is None or max_words >= self.n_words:
            return self
        if max_words < 1:
            raise DatasetError(f"max_words must be >= 1, got {max_words}")
        cut = [m.end() for m in re.finditer(r"\S+", self.text)][max_words - 1]
        return TextCorpus(f"{self.name}[:{max_words}w]", self.text[:cut])


def fortunes(directory: str | os.PathLike = FORTUNES_DIR) -> TextCorpus:
    """Every fortune cookie file of Debian `fortunes` (files in sorted order, cookies split on `%` lines).

    Example:
        >>> fortunes().n_words > 200_000
        True
    """
    root = Path(directory)
    files = sorted(p for p in root.glob("*") if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8"))
    if not files:
        raise DatasetError(f"no fortune files in {root}; install them with: apt-get install -y fortunes")
    cookies = []
    for path in files:
        for cookie in re.split(r"^%[ \t]*$", path.read_text(encoding="utf-8", errors="replace"), flags=re.M):
            if cookie.strip():
                cookies.append(cookie.strip("\n"))
    return TextCorpus("fortunes", "\n\n".join(cookies))


def bible_kjv() -> TextCorpus:
    """The King James Bible, verse per line without references, via the `bible` program (Debian `bible-kjv`).

    Example:
        >>> bible_kjv().text.startswith("In the beginning God created")
        True
    """
    program = shutil.which("bible")
    if program is None:
        raise DatasetError("the 'bible-kjv' corpus needs the `bible` program: apt-get install -y bible-kjv")
    output = subprocess.run([program, "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    verses = [re.sub(r"^\S+?\d+:\d+\s+", "", line) for line in output.splitlines() if line.strip()]
    return TextCorpus("bible-kjv", "\n".join(verses))


def not_text(data: bytes) -> str | None:
    """Why `data` is not text, or None when it is: NUL bytes (a binary file, or UTF-16), or more than
    `MAX_INVALID_SHARE` (1%) of its bytes invalid as UTF-8 (a few stray bytes are decoded as U+FFFD).

    Example:
        >>> not_text("héllo wörld".encode()), not_text(bytes([0x7f, 0x45, 0x4c, 0x46, 0, 0]))
        (None, 'it holds NUL bytes (a binary file, or UTF-16 text)')
    """
    if b"\x00" in data:
        return "it holds NUL bytes (a binary file, or UTF-16 text)"
    try:
        data.decode("utf-8")
        return None
    except UnicodeDecodeError:
        pass
    invalid = data.decode("utf-8", errors="replace").count("\ufffd") - data.count("\ufffd".encode())
    if invalid > MAX_INVALID_SHARE * len(data):
        return f"{invalid / len(data):.0%} of its bytes are not valid UTF-8 (more than {MAX_INVALID_SHARE:.0%})"
    return None


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def text_files(path: str | os.PathLike) -> TextCorpus:
    """A text file, or every text file under a folder (sorted, hidden files and folders left out, decoded as
    UTF-8 with the rare invalid byte replaced), as one corpus named `file:PATH#HASH` (HASH: of the text, so cached
    maxima or a resumed SAE run never take an edited file for the old one).

    A file that is not text (`not_text`: NUL bytes, or over 1% invalid UTF-8) is refused with `DatasetError`;
    in a folder such files are left out with a warning, and a folder with no text file at all is refused.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp(); _ = Path(folder, "a.txt").write_text("hello world")
        >>> text_files(folder).n_words
        2
    """
    root = Path(path).expanduser()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root))
    else:
        raise DatasetError(f"text corpus '{root}' is neither a file nor a folder; or use one of {', '.join(TEXT_CORPORA[:2])}")
    texts, skipped = [], []
    for file in files:
        try:
            data = file.read_bytes()
        except OSError as error:
            raise DatasetError(f"text corpus '{root}': cannot read '{file}' ({error.strerror or error})") from error
        why = not_text(data)
        if why is not None:
            if root.is_file():
                raise DatasetError(f"text corpus '{root}' is not text: {why}; give a UTF-8 text file or folder")
            skipped.append((file, why))
            continue
        texts.append(data.decode("utf-8", errors="replace").strip())
    if skipped and not texts:
        raise DatasetError(f"text corpus '{root}' holds no text file: all {len(skipped)} file(s) are not text (e.g. "
                           f"'{skipped[0][0].relative_to(root)}': {skipped[0][1]}); give a folder of UTF-8 text files")
    if skipped:
        log.warning("text corpus '%s': left out %d file(s) that are not text, e.g. '%s' (%s)", root, len(skipped),
                    skipped[0][0].relative_to(root), skipped[0][1])
    text = "\n\n".join(texts)
    if not text.strip():
        raise DatasetError(f"text corpus '{root}' is empty")
    return TextCorpus(f"file:{root.resolve()}#{short_hash(text)}", text)  # edited files never pass for the old text


def read_until(spec: "str | TextCorpus", min_words: int | None = None, *,
               text_column: str = "text") -> tuple[TextCorpus, bool]:
    """The corpus `spec` (as `open_text` names it) read in whole documents until at least `min_words` words, and
    whether it was read to its end. Tables stop reading there (a hub dataset streams no further); corpora that are
    read whole (fortunes, text files) come entire.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp(), "t.jsonl")
        >>> _ = path.write_text('{"text": "one two"}\\n{"text": "three"}\\n')
        >>> corpus, complete = read_until(str(path), 1)
        >>> corpus.text, complete
        ('one two', False)
    """
    if isinstance(spec, TextCorpus) or not is_table(spec) or spec in ("fortunes", "bible-kjv", "bible"):
        return open_text(spec, text_column=text_column), True
    table = read_table(spec, text_column, min_words)
    text = "\n\n".join(table.documents)
    prefix = "" if spec.startswith(HUB_PREFIX) else "file:"
    return TextCorpus(f"{prefix}{table.source}#{short_hash(text)}", text), table.complete


def open_text(spec: "str | TextCorpus", max_words: int | None = None, *, text_column: str = "text") -> TextCorpus:
    """A text corpus by name or path (see the module docstring), optionally cut to its first `max_words` words.

    `text_column` names the column of a table that holds the text (ignored for text files and named corpora). A
    table is read only as far as `max_words` needs; a missing column, a column that is not text or a table
    without text is refused with `DatasetError` in one line.

    Example:
        >>> open_text("fortunes", max_words=1000).name
        'fortunes[:1000w]'
    """
    if isinstance(spec, TextCorpus):
        return spec.limited(max_words)
    if max_words is not None and max_words < 1:
        raise DatasetError(f"max_words must be >= 1, got {max_words}")
    if spec == "fortunes":
        found = fortunes()
    elif spec in ("bible-kjv", "bible"):
        found = bible_kjv()
    elif is_table(spec):
        found, _ = read_until(spec, max_words, text_column=text_column)
    elif Path(spec).expanduser().exists():
        found = text_files(spec)
    else:
        raise DatasetError(f"unknown text corpus '{spec}'; use one of {', '.join(TEXT_CORPORA)}")
    return found.limited(max_words)
