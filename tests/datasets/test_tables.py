"""Tests for dreamy.datasets.tables (through open_text): corpora from datasets folders, .jsonl, .parquet, .csv
files and hub datasets, each row's text column one document."""

import json

import datasets as hf
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dreamy.datasets import DatasetError, open_text, read_until

TEXTS = ["The cat sat on the mat.", "A dog ran\n\nin the park.", "", "Birds sing at dawn."]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_a_datasets_folder_is_its_text_column_not_its_metadata(tmp_path):
    folder = tmp_path / "ds"
    hf.Dataset.from_dict({"text": TEXTS, "label": [0, 1, 2, 3]}).save_to_disk(str(folder))
    corpus = open_text(str(folder))
    assert corpus.text == "\n\n".join(t for t in TEXTS if t)  # the empty row is left out
    assert "{" not in corpus.text and "arrow" not in corpus.text
    assert corpus.name.startswith(f"file:{folder.resolve()}[text]#")
    with pytest.raises(DatasetError, match=r"text corpus '.*ds': column 'label' holds int64, not text; its columns: "
                                           r"text \(string\), label \(int64\)"):
        open_text(str(folder), text_column="label")


def test_a_dataset_dict_folder_names_its_split_folders(tmp_path):
    folder = tmp_path / "dd"
    hf.DatasetDict({"train": hf.Dataset.from_dict({"text": ["a b"]}),
                    "test": hf.Dataset.from_dict({"text": ["c d"]})}).save_to_disk(str(folder))
    with pytest.raises(DatasetError, match=r"is a DatasetDict of splits test, train; give one split's folder"):
        open_text(str(folder))
    assert open_text(str(folder / "test")).text == "c d"


def test_jsonl_rows_are_documents_of_the_text_column(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", [{"id": i, "body": t} for i, t in enumerate(TEXTS)])
    corpus = open_text(path, text_column="body")
    assert corpus.text == "\n\n".join(t for t in TEXTS if t) and '"body"' not in corpus.text
    assert corpus.name.startswith(f"file:{tmp_path.resolve() / 'a.jsonl'}[body]#")
    with pytest.raises(DatasetError, match=r"text corpus '.*a\.jsonl' has no column 'text'; its columns: id, body"):
        open_text(path)
    with pytest.raises(DatasetError, match=r"column 'id' holds int values \(line 1\), not text; its columns: id, body"):
        open_text(path, text_column="id")


def test_jsonl_lines_that_are_not_objects_are_refused_by_line(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(DatasetError, match=r"line 2 is not JSON"):
        open_text(str(path))
    _jsonl(path, [{"text": "fine"}, {"other": "x"}])
    with pytest.raises(DatasetError, match=r"has no column 'text' on line 2; its columns: other"):
        open_text(str(path))


def test_parquet_and_csv_text_columns(tmp_path):
    table = pa.table({"n": [1, 2, 3, 4], "content": TEXTS})
    pq.write_table(table, tmp_path / "t.parquet")
    assert open_text(str(tmp_path / "t.parquet"), text_column="content").text.startswith("The cat sat")
    with pytest.raises(DatasetError, match=r"'.*t\.parquet' has no column 'text'; its columns: n \(int64\), content \(string\)"):
        open_text(str(tmp_path / "t.parquet"))
    (tmp_path / "t.csv").write_text('n,content\n1,"The cat, it sat."\n2,"Two\nlines"\n')
    corpus = open_text(str(tmp_path / "t.csv"), text_column="content")
    assert corpus.text == "The cat, it sat.\n\nTwo\nlines"
    with pytest.raises(DatasetError, match=r"'.*t\.csv': column 'n' holds int64, not text; its columns: n \(int64\), "
                                           r"content \(string\)"):
        open_text(str(tmp_path / "t.csv"), text_column="n")


@pytest.mark.parametrize("name, write", [
    ("e.jsonl", lambda p: _jsonl(p, [{"text": ""}, {"text": "   "}, {"text": None}])),
    ("e.csv", lambda p: p.write_text("text,n\n,1\n")),
    ("h.csv", lambda p: p.write_text("")),
    ("z.jsonl", lambda p: p.write_text("")),
])
def test_a_table_without_text_is_refused(tmp_path, name, write):
    write(tmp_path / name)
    with pytest.raises(DatasetError, match=f"text corpus '.*{name}' is empty"):
        open_text(str(tmp_path / name))


def test_a_word_limit_reads_only_the_rows_it_needs(tmp_path):
    path = _jsonl(tmp_path / "many.jsonl", [{"text": f"row {i} has five words"} for i in range(1000)])
    corpus, complete = read_until(path, 12)
    assert corpus.text.count("row") == 3 and not complete  # whole rows until at least 12 words
    cut = open_text(path, max_words=7)
    assert cut.text == "row 0 has five words\n\nrow 1" and cut.name.endswith("[:7w]")
    assert open_text(path).n_words == 5000


@pytest.fixture
def hub(monkeypatch):
    """`datasets.load_dataset` answering for one fake hub dataset, counting the rows streamed."""
    calls, streamed = [], []

    def rows():
        for i in range(100):
            streamed.append(i)
            yield {"text": f"story {i} of the hub", "id": i}

    def load_dataset(name, split=None, streaming=False, **kwargs):
        calls.append((name, split, streaming))
        if name != "org/stories":
            raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub or cannot be accessed.")
        return hf.IterableDataset.from_generator(rows)

    monkeypatch.setattr(hf, "load_dataset", load_dataset)
    return calls, streamed


def test_a_hub_dataset_is_streamed_as_far_as_needed(hub):
    calls, streamed = hub
    corpus = open_text("hf:org/stories:validation", max_words=12)
    assert calls == [("org/stories", "validation", True)]
    assert corpus.text == "story 0 of the hub\n\nstory 1 of the hub\n\nstory 2" and corpus.name.startswith(
        "hf:org/stories:validation[text]#")
    assert len(streamed) < 100  # the stream stopped early
    assert open_text("hf:org/stories").n_words == 500 and calls[-1] == ("org/stories", "train", True)


def test_a_hub_dataset_refuses_a_missing_column_and_a_missing_dataset(hub):
    with pytest.raises(DatasetError, match=r"'hf:org/stories:train' has no column 'body'; its columns: text, id"):
        open_text("hf:org/stories", text_column="body")
    with pytest.raises(DatasetError, match=r"column 'id' holds int values, not text"):
        open_text("hf:org/stories", text_column="id")
    with pytest.raises(DatasetError, match=r"hub corpus 'hf:org/nothing:train' cannot be opened \(FileNotFoundError"):
        open_text("hf:org/nothing")
    with pytest.raises(DatasetError, match=r"names no dataset split; write hf:NAME or hf:NAME:SPLIT"):
        open_text("hf:org/stories:")
