"""A corpus as tokens: tokenized once per tokenizer, optionally cut to a token budget, and cached on disk.

`token_stream(corpus, tokenizer, max_tokens)` tokenizes the corpus paragraph by paragraph (its documents are
joined by blank lines; each paragraph is tokenized with the blank line after it, no special tokens, as
`dreamy.sae.activations.tokenize` does), stops once `max_tokens` tokens are there, and keeps the first
`max_tokens`. The stream is saved under `<dreamy cache>/tokens/KEY.pt`, KEY a hash of the corpus' text, the
tokenizer's identity (its vocabulary, merges and special tokens, not its name) and the budget; the next call with
the same three reads it instead of tokenizing. A corpus named by a string is read only as far as the budget needs:
a table or a hub dataset is read in whole rows until it holds `max_tokens` words (at least one token each), then
further if those give fewer tokens.

`limit_tokens` gives the text of those tokens as a `TextCorpus`, for code that takes a corpus and tokenizes it
itself.

Example:
    >>> from dreamy.models.tiny import tiny_tokenizer
    >>> from dreamy.datasets import TextCorpus
    >>> stream = token_stream(TextCorpus("t", "The cat sat on the mat.\\n\\nThe dog ran."), tiny_tokenizer(), 5,
    ...                       cache_dir=None)
    >>> stream.name, len(stream.ids)
    ('t[:5tok]', 5)
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dreamy.core.files import fingerprint, short_hash, write_atomic
from dreamy.datasets.errors import DatasetError
from dreamy.datasets.text import TextCorpus, read_until

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the stream's layout or the tokenization changes
BATCH_PARAGRAPHS = 512  # paragraphs per tokenizer call


@dataclass(frozen=True)
class TokenStream:
    """The token ids `[N]` of a corpus (`name`: the corpus' name, `[:Ntok]` added when cut to a budget).

    `paragraphs` paragraphs are in whole; the next one gives its first `cut` tokens (0: the stream ends at a
    paragraph's end). `key` is the cache key; `cached` says whether the ids were read from the cache.
    """

    name: str
    ids: Tensor
    paragraphs: int
    cut: int
    key: str
    cached: bool = False

    def __len__(self) -> int:
        return len(self.ids)


def paragraphs(corpus: TextCorpus) -> list[str]:
    """The corpus' paragraphs (split on blank lines, blank ones left out): the units the stream tokenizes.

    Example:
        >>> paragraphs(TextCorpus("t", "a b\\n\\n\\n\\nc"))
        ['a b', 'c']
    """
    return [part for part in corpus.text.split("\n\n") if part.strip()]


def tokenizer_identity(tokenizer: Any) -> str:
    """What makes two tokenizers tokenize alike: the class and a hash of the vocabulary, merges, normalizer and
    special tokens (a fast tokenizer's whole definition), not the name it was loaded under.

    Example:
        >>> from dreamy.models.tiny import tiny_tokenizer
        >>> tokenizer_identity(tiny_tokenizer()) == tokenizer_identity(tiny_tokenizer())
        True
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    elif hasattr(tokenizer, "get_vocab"):
        body = repr(sorted(tokenizer.get_vocab().items()))
    else:
        raise DatasetError(f"cannot tell a {type(tokenizer).__name__} apart from other tokenizers: it has neither a "
                           "backend_tokenizer nor get_vocab(); give a Hugging Face tokenizer")
    special = repr(sorted((str(k), str(v)) for k, v in (getattr(tokenizer, "special_tokens_map", None) or {}).items()))
    return f"{type(tokenizer).__name__}:{short_hash(body + special, 16)}"


def _cache_folder(cache_dir: str | os.PathLike | None) -> Path | None:
    if cache_dir == "default":
        from dreamy.models import cache_dir as dreamy_cache

        return dreamy_cache() / "tokens"
    return None if cache_dir is None else Path(cache_dir)


def _tokenize(corpus: TextCorpus, tokenizer: Any, max_tokens: int | None) -> tuple[Tensor, int, int]:
    """The ids (cut to `max_tokens`), the paragraphs in whole and the tokens of the one cut."""
    parts = paragraphs(corpus)
    chunks: list[list[int]] = []
    total = 0
    for first in range(0, len(parts), BATCH_PARAGRAPHS):
        batch = [part + "\n\n" for part in parts[first:first + BATCH_PARAGRAPHS]]
        encoded = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        for ids in encoded:
            chunks.append(ids)
            total += len(ids)
            if max_tokens is not None and total >= max_tokens:
                break
        if max_tokens is not None and total >= max_tokens:
            break
    flat = [token for ids in chunks for token in ids]
    whole, cut = len(chunks), 0
    if max_tokens is not None and total > max_tokens:
        flat = flat[:max_tokens]
        whole, cut = len(chunks) - 1, len(chunks[-1]) - (total - max_tokens)
    return torch.tensor(flat, dtype=torch.long), whole, cut


def _load(path: Path) -> dict[str, Any] | None:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as error:  # a truncated or foreign file: tokenize again and replace it
        log.warning("token cache '%s' is unreadable (%s); tokenizing again", path, error)
        return None
    if not isinstance(stored, dict) or stored.get("format") != CACHE_FORMAT or "ids" not in stored:
        return None
    return stored


def _stream_of(corpus: TextCorpus, tokenizer: Any, max_tokens: int | None, cache_dir: str | os.PathLike | None) -> TokenStream:
    key = fingerprint({"text": short_hash(corpus.text, 32), "tokenizer": tokenizer_identity(tokenizer),
                       "max_tokens": max_tokens, "format": CACHE_FORMAT})
    folder = _cache_folder(cache_dir)
    path = folder / f"{key}.pt" if folder is not None else None
    stored = _load(path) if path is not None else None
    if stored is not None:
        ids, whole, cut, cached = stored["ids"].long(), int(stored["paragraphs"]), int(stored["cut"]), True
    else:
        ids, whole, cut = _tokenize(corpus, tokenizer, max_tokens)
        cached = False
        if path is not None:
            buffer = io.BytesIO()
            torch.save({"format": CACHE_FORMAT, "ids": ids.to(torch.int32 if len(ids) == 0 or int(ids.max()) < 2**31
                                                               else torch.long),
                        "paragraphs": whole, "cut": cut, "corpus": corpus.name}, buffer)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, buffer.getvalue())
            except OSError as error:  # a read-only cache: the stream is still right, only not kept
                log.warning("token cache '%s' cannot be written (%s); the stream is not kept", path, error)
    complete = cut == 0 and whole == len(paragraphs(corpus))
    name = corpus.name if complete else f"{corpus.name}[:{len(ids)}tok]"
    return TokenStream(name, ids, whole, cut, key, cached)


def _read(corpus: "str | TextCorpus", tokenizer: Any, max_tokens: int | None, text_column: str,
          cache_dir: str | os.PathLike | None) -> tuple[TextCorpus, TokenStream]:
    """The corpus read as far as `max_tokens` needs, and its stream."""
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise DatasetError(f"max_tokens must be a whole number >= 1, got {max_tokens!r}")
    if tokenizer is None:
        raise DatasetError("a token stream needs the model's tokenizer; this model has none")
    words = max_tokens
    while True:
        found, complete = read_until(corpus, words, text_column=text_column)
        stream = _stream_of(found, tokenizer, max_tokens, cache_dir)
        if complete or len(stream.ids) >= max_tokens:
            break
        words *= 2  # this tokenizer gave fewer tokens than words: read further
    if not complete and stream.name == found.name:  # all of a partial read: still a cut of the corpus
        stream = replace(stream, name=f"{found.name}[:{len(stream.ids)}tok]")
    if len(stream.ids) == 0:
        raise DatasetError(f"text corpus '{found.name}' gives no tokens")
    return found, stream


def token_stream(corpus: "str | TextCorpus", tokenizer: Any, max_tokens: int | None = None, *, text_column: str = "text",
                 cache_dir: str | os.PathLike | None = "default") -> TokenStream:
    """The token ids of `corpus` (an `open_text` name or path, or a `TextCorpus`), the first `max_tokens` when
    given, read from the cache when this corpus, tokenizer and budget were tokenized before (see the module
    docstring). `cache_dir`: "default" (`<dreamy cache>/tokens`), a folder, or None for no cache.

    Example:
        >>> from dreamy.models.tiny import tiny_tokenizer
        >>> stream = token_stream(TextCorpus("t", "The cat sat."), tiny_tokenizer(), cache_dir=None)
        >>> stream.name, stream.paragraphs, stream.cut
        ('t', 1, 0)
    """
    return _read(corpus, tokenizer, max_tokens, text_column, cache_dir)[1]


def limit_tokens(corpus: "str | TextCorpus", tokenizer: Any, max_tokens: int, *, text_column: str = "text",
                 cache_dir: str | os.PathLike | None = "default") -> TextCorpus:
    """The text of the first `max_tokens` tokens of `corpus` (named like its `token_stream`), for code that takes a
    corpus and tokenizes it itself; the corpus itself when it is no longer. Tokenized again paragraph by paragraph,
    the text gives those tokens, give or take the cut paragraph's last word and blank line.

    Example:
        >>> from dreamy.models.tiny import tiny_tokenizer
        >>> cut = limit_tokens(TextCorpus("t", "The cat sat.\\n\\nThe dog ran."), tiny_tokenizer(), 3, cache_dir=None)
        >>> cut.name, cut.text
        ('t[:3tok]', 'The cat')
    """
    found, stream = _read(corpus, tokenizer, max_tokens, text_column, cache_dir)
    if stream.name == found.name:
        return found
    parts = paragraphs(found)
    kept = parts[:stream.paragraphs]
    if stream.cut:
        part = parts[stream.paragraphs]
        try:
            offsets = tokenizer(part + "\n\n", add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            kept.append(part[:offsets[stream.cut - 1][1]])
        except (NotImplementedError, KeyError, TypeError, ValueError):  # a slow tokenizer: no offsets
            kept.append(tokenizer.decode(stream.ids[len(stream.ids) - stream.cut:].tolist()))
    return TextCorpus(stream.name, "\n\n".join(kept).strip())
