"""Tests for dreamy.datasets.tokens: a corpus tokenized once per tokenizer, cut to a token budget, cached on disk."""

import json

import pytest
import torch

from dreamy.datasets import DatasetError, TextCorpus, limit_tokens, token_stream, tokenizer_identity
from dreamy.models.tiny import tiny_tokenizer
from dreamy.sae.activations import tokenize

TEXT = "\n\n".join(f"The cat number {i} sat on the mat and the dog ran in the park." for i in range(40))


class Counting:
    """A tokenizer that counts the texts it is asked to tokenize."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, 0
        self.backend_tokenizer = tokenizer.backend_tokenizer
        self.special_tokens_map = tokenizer.special_tokens_map

    def __call__(self, texts, **kwargs):
        self.texts += len(texts) if isinstance(texts, list) else 1
        return self.tokenizer(texts, **kwargs)

    def decode(self, ids):
        return self.tokenizer.decode(ids)


class HalfWords:
    """A tokenizer with fewer tokens than words: one token per two words."""

    special_tokens_map = {}

    def get_vocab(self):
        return {"x": 0}

    def __call__(self, texts, **kwargs):
        return {"input_ids": [[0] * (len(text.split()) // 2) for text in texts]}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_the_stream_is_the_corpus_tokenized_paragraph_by_paragraph(tokenizer):
    corpus = TextCorpus("cats", TEXT)
    stream = token_stream(corpus, tokenizer, cache_dir=None)
    assert torch.equal(stream.ids, tokenize(tokenizer, corpus))  # what SAE training tokenizes
    assert stream.name == "cats" and (stream.paragraphs, stream.cut) == (40, 0)


def test_a_budget_keeps_the_first_tokens_and_names_the_cut(tokenizer):
    corpus = TextCorpus("cats", TEXT)
    whole = token_stream(corpus, tokenizer, cache_dir=None).ids
    stream = token_stream(corpus, tokenizer, 100, cache_dir=None)
    assert torch.equal(stream.ids, whole[:100]) and stream.name == "cats[:100tok]"
    per_paragraph = len(tokenize(tokenizer, TextCorpus("p", TEXT.split("\n\n")[0])))
    assert stream.paragraphs * per_paragraph + stream.cut == 100 and 0 < stream.cut < per_paragraph
    assert token_stream(corpus, tokenizer, len(whole) + 5, cache_dir=None).name == "cats"  # budget not reached
    with pytest.raises(DatasetError, match="max_tokens must be a whole number >= 1, got 0"):
        token_stream(corpus, tokenizer, 0, cache_dir=None)


def test_the_second_call_reads_the_cache(tmp_path, tokenizer):
    counting = Counting(tokenizer)
    corpus = TextCorpus("cats", TEXT)
    first = token_stream(corpus, counting, 50, cache_dir=tmp_path)
    assert counting.texts > 0 and not first.cached and len(list(tmp_path.glob("*.pt"))) == 1
    counting.texts = 0
    second = token_stream(corpus, counting, 50, cache_dir=tmp_path)
    assert counting.texts == 0 and second.cached  # not tokenized again
    assert torch.equal(first.ids, second.ids) and second.ids.dtype == torch.long
    assert (second.name, second.paragraphs, second.cut, second.key) == (first.name, first.paragraphs, first.cut, first.key)
    token_stream(TextCorpus("cats", TEXT + " edited"), counting, 50, cache_dir=tmp_path)
    assert counting.texts > 0  # another text is another key, even under the same name
    counting.texts = 0
    assert not token_stream(corpus, counting, 60, cache_dir=tmp_path).cached  # so is another budget


def test_the_key_holds_the_tokenizer_not_its_name(tmp_path, tokenizer):
    other = tiny_tokenizer()
    assert tokenizer_identity(other) == tokenizer_identity(tokenizer)
    other.add_tokens(["zebra"])
    assert tokenizer_identity(other) != tokenizer_identity(tokenizer)
    corpus = TextCorpus("z", "a zebra ran")
    assert token_stream(corpus, tokenizer, cache_dir=tmp_path).key != token_stream(corpus, other, cache_dir=tmp_path).key


def test_an_unreadable_cache_file_is_tokenized_again(tmp_path, tokenizer):
    corpus = TextCorpus("cats", TEXT)
    stream = token_stream(corpus, tokenizer, 30, cache_dir=tmp_path)
    (tmp_path / f"{stream.key}.pt").write_bytes(b"not a torch file")
    again = token_stream(corpus, tokenizer, 30, cache_dir=tmp_path)
    assert not again.cached and torch.equal(again.ids, stream.ids)
    assert token_stream(corpus, tokenizer, 30, cache_dir=tmp_path).cached


def test_a_table_is_read_only_as_far_as_the_budget_needs(tmp_path, tokenizer):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": p}) + "\n" for p in TEXT.split("\n\n")))
    whole = token_stream(str(path), tokenizer, cache_dir=None)
    stream = token_stream(str(path), tokenizer, 100, cache_dir=None)
    assert torch.equal(stream.ids, whole.ids[:100])  # the tokens of the whole table's start
    assert stream.name.endswith("[:100tok]") and stream.name.startswith(f"file:{path.resolve()}[text]#")
    assert whole.name.startswith(f"file:{path.resolve()}[text]#") and "tok]" not in whole.name


def test_a_tokenizer_with_fewer_tokens_than_words_reads_further(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": "one two three four"}) + "\n" for _ in range(100)))
    stream = token_stream(str(path), HalfWords(), 100, cache_dir=None)
    assert len(stream) == 100 and stream.name.endswith("[:100tok]")  # 50 rows of 2 tokens, read in two goes
    assert len(token_stream(str(path), HalfWords(), 500, cache_dir=None)) == 200  # the table holds no more


def test_limit_tokens_gives_the_text_of_the_budget(tokenizer):
    corpus = TextCorpus("cats", TEXT)
    cut = limit_tokens(corpus, tokenizer, 100, cache_dir=None)
    assert cut.name == "cats[:100tok]" and TEXT.startswith(cut.text)
    assert 100 <= len(tokenize(tokenizer, cut)) <= 103  # the cut paragraph gets its blank line back
    assert limit_tokens(corpus, tokenizer, 10**6, cache_dir=None) is corpus
    with pytest.raises(DatasetError, match="needs the model's tokenizer"):
        limit_tokens(corpus, None, 10, cache_dir=None)
