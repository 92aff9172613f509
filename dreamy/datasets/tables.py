"""Text corpora from tables: a Hugging Face `datasets` folder (`save_to_disk`), a `.jsonl`, `.parquet` or `.csv` file,
or a hub dataset streamed by name (`hf:NAME[:SPLIT]`), each row's `text_column` one document.

`read_table(spec, text_column, min_words)` gives the documents (rows whose text is empty are left out) and stops
reading once `min_words` words are read; a missing column, a column that is not text or a table without text is
refused with `DatasetError`, in one line naming the source, the column and the columns there are.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp(), "notes.jsonl")
    >>> _ = path.write_text('{"text": "the cat sat", "id": 1}\\n{"text": "a dog ran", "id": 2}\\n')
    >>> table = read_table(str(path), "text")
    >>> table.documents, table.complete
    (['the cat sat', 'a dog ran'], True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from dreamy.datasets.errors import DatasetError

TABLE_SUFFIXES = (".jsonl", ".parquet", ".csv")
HUB_PREFIX = "hf:"
DEFAULT_SPLIT = "train"
BATCH_ROWS = 1024  # rows read at a time from arrow-backed tables


@dataclass(frozen=True)
class Table:
    """Documents read from a table: `source` names it (path or `hf:NAME:SPLIT`) with the column, `complete` is False
    when reading stopped at a word budget before the table's end."""

    source: str
    documents: list[str]
    complete: bool


def is_table(spec: str) -> bool:
    """Whether `spec` names a table: `hf:NAME[:SPLIT]`, a `.jsonl`/`.parquet`/`.csv` file, or a `datasets` folder.

    Example:
        >>> is_table("hf:wikitext"), is_table("notes.csv"), is_table("fortunes")
        (True, True, False)
    """
    if spec.startswith(HUB_PREFIX):
        return True
    path = Path(spec).expanduser()
    if path.suffix.lower() in TABLE_SUFFIXES and not path.is_dir():
        return True
    return path.is_dir() and _datasets_folder(path) is not None


def _datasets_folder(path: Path) -> str | None:
    """"dataset" or "dict" for a `save_to_disk` folder of a `Dataset` or a `DatasetDict`, else None."""
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return "dataset"
    if (path / "dataset_dict.json").is_file():
        return "dict"
    return None


def read_table(spec: str, text_column: str = "text", min_words: int | None = None) -> Table:
    """The documents of the table `spec` (see the module docstring), read until `min_words` words when given (whole
    rows: the last row read is kept entire).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp(), "t.csv")
        >>> _ = path.write_text("id,body\\n1,hello there\\n2,general kenobi\\n")
        >>> read_table(str(path), "body", min_words=1).documents
        ['hello there']
    """
    if not isinstance(text_column, str) or not text_column:
        raise DatasetError(f"text_column must be a column name, got {text_column!r}")
    if min_words is not None and min_words < 1:
        raise DatasetError(f"min_words must be >= 1, got {min_words}")
    if spec.startswith(HUB_PREFIX):
        source, rows = _hub_rows(spec, text_column)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise DatasetError(f"text corpus '{spec}' does not exist; give a .jsonl, .parquet or .csv file or a "
                               "datasets folder (save_to_disk)")
        suffix = path.suffix.lower()
        source = f"{path.resolve()}"
        if path.is_dir():
            rows = _folder_rows(path, text_column)
        elif suffix == ".jsonl":
            rows = _jsonl_rows(path, text_column)
        elif suffix == ".parquet":
            rows = _parquet_rows(path, text_column)
        else:
            rows = _csv_rows(path, text_column)
    documents, words, complete, n_rows = [], 0, True, 0
    for text in rows:
        n_rows += 1
        if min_words is not None and words >= min_words:
            complete = False
            break
        text = text.strip() if text is not None else ""
        if text:
            documents.append(text)
            words += len(text.split())
    if not documents:
        held = f"its {n_rows} row(s)" if n_rows else "no rows at all"
        raise DatasetError(f"text corpus '{source}' is empty: column '{text_column}' holds no text in {held}")
    return Table(f"{source}[{text_column}]", documents, complete)


def _columns(names: Iterable[str], types: Iterable[Any] | None = None) -> str:
    if types is None:
        return ", ".join(names) or "none"
    return ", ".join(f"{n} ({t})" for n, t in zip(names, types)) or "none"


def _missing(source: Any, column: str, columns: str) -> DatasetError:
    return DatasetError(f"text corpus '{source}' has no column '{column}'; its columns: {columns}; name the text column")


def _not_text(source: Any, column: str, kind: Any, columns: str) -> DatasetError:
    return DatasetError(f"text corpus '{source}': column '{column}' holds {kind}, not text; its columns: {columns}; "
                        "name the text column")


def _check_arrow_column(source: Any, schema: Any, column: str) -> None:
    """Refuse a missing or non-string column of a pyarrow `schema`."""
    import pyarrow as pa

    columns = _columns(schema.names, [f.type for f in schema])
    if column not in schema.names:
        raise _missing(source, column, columns)
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise _not_text(source, column, kind, columns)


def _arrow_rows(batches: Iterable[Any], column: str) -> Iterator[str | None]:
    for batch in batches:
        yield from batch.column(column).to_pylist()


def _parquet_rows(path: Path, column: str) -> Iterator[str | None]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError with multi-line text
        raise DatasetError(f"text corpus '{path}' is not a readable parquet file ({str(error).splitlines()[0]})") from error
    _check_arrow_column(path, file.schema_arrow, column)
    return _arrow_rows(file.iter_batches(batch_size=BATCH_ROWS, columns=[column]), column)


def _csv_rows(path: Path, column: str) -> Iterator[str | None]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    if path.stat().st_size == 0:
        raise DatasetError(f"text corpus '{path}' is empty: the file holds no header and no rows")
    try:
        reader = pcsv.open_csv(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DatasetError(f"text corpus '{path}' is not a readable CSV file ({str(error).splitlines()[0]})") from error
    _check_arrow_column(path, reader.schema, column)

    def rows() -> Iterator[str | None]:
        try:
            yield from _arrow_rows(reader, column)
        except pa.ArrowInvalid as error:  # a later block that does not parse as the first did
            raise DatasetError(f"text corpus '{path}': {str(error).splitlines()[0]}") from error
    return rows()


def _jsonl_rows(path: Path, column: str) -> Iterator[str | None]:
    with path.open(encoding="utf-8-sig", errors="replace") as file:
        first = True
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(f"text corpus '{path}': line {number} is not JSON ({error.msg}); give one JSON "
                                   "object per line") from None
            if not isinstance(row, dict):
                raise DatasetError(f"text corpus '{path}': line {number} holds a JSON {type(row).__name__}, not an "
                                   "object; give one JSON object per line")
            columns = _columns(row)
            if column not in row:
                at = "" if first else f" on line {number}"
                raise DatasetError(f"text corpus '{path}' has no column '{column}'{at}; its columns: {columns}; "
                                   "name the text column")
            value = row[column]
            if value is not None and not isinstance(value, str):
                raise _not_text(path, column, f"{type(value).__name__} values (line {number})", columns)
            first = False
            yield value


def _folder_rows(path: Path, column: str) -> Iterator[str | None]:
    kind = _datasets_folder(path)
    if kind == "dict":
        splits = sorted(p.name for p in path.iterdir() if p.is_dir() and _datasets_folder(p) == "dataset")
        raise DatasetError(f"text corpus '{path}' is a DatasetDict of splits {', '.join(splits) or 'none'}; give one "
                           f"split's folder, e.g. '{path / (splits[0] if splits else 'train')}'")
    import datasets as hf

    try:
        dataset = hf.load_from_disk(str(path))
    except Exception as error:  # datasets raises FileNotFoundError / ArrowInvalid with long text
        raise DatasetError(f"text corpus '{path}': cannot load the datasets folder ({str(error).splitlines()[0]})") from error
    _check_features(path, dataset.features, dataset.column_names, column)
    return (value for batch in dataset.select_columns([column]).iter(batch_size=BATCH_ROWS) for value in batch[column])


def _check_features(source: Any, features: Any, names: list[str], column: str) -> None:
    """Refuse a missing column, or one whose `datasets` feature is not a string `Value`."""
    types = [_feature_kind(features[n]) for n in names] if features is not None else None
    columns = _columns(names, types)
    if column not in names:
        raise _missing(source, column, columns)
    if features is not None and _feature_kind(features[column]) not in ("string", "large_string", "null"):
        raise _not_text(source, column, _feature_kind(features[column]), columns)


def _feature_kind(feature: Any) -> str:
    return getattr(feature, "dtype", None) or type(feature).__name__


def parse_hub(spec: str) -> tuple[str, str]:
    """(NAME, SPLIT) of `hf:NAME[:SPLIT]` (SPLIT `train` when left out).

    Example:
        >>> parse_hub("hf:Salesforce/wikitext:test"), parse_hub("hf:roneneldan/TinyStories")
        (('Salesforce/wikitext', 'test'), ('roneneldan/TinyStories', 'train'))
    """
    body = spec[len(HUB_PREFIX):]
    name, _, split = body.partition(":")
    if not name or (_ and not split):
        raise DatasetError(f"hub corpus '{spec}' names no dataset{' split' if name else ''}; write hf:NAME or "
                           "hf:NAME:SPLIT, e.g. hf:roneneldan/TinyStories:validation")
    return name, split or DEFAULT_SPLIT


def _hub_rows(spec: str, column: str) -> tuple[str, Iterator[str | None]]:
    """The source name and the rows of a hub dataset, streamed (nothing is downloaded beyond the rows read)."""
    name, split = parse_hub(spec)
    source = f"hf:{name}:{split}"
    import datasets as hf

    try:
        stream = hf.load_dataset(name, split=split, streaming=True)
    except Exception as error:  # offline, unknown name or split: datasets raises many kinds
        raise DatasetError(f"hub corpus '{source}' cannot be opened ({type(error).__name__}: "
                           f"{(str(error).splitlines() or [''])[0]})") from error
    names = list(stream.column_names) if getattr(stream, "column_names", None) else None
    if names is not None:
        _check_features(source, getattr(stream, "features", None), names, column)

    def rows() -> Iterator[str | None]:
        try:
            for row in stream:
                if column not in row:
                    raise _missing(source, column, _columns(row))
                value = row[column]
                if value is not None and not isinstance(value, str):
                    raise _not_text(source, column, f"{type(value).__name__} values", _columns(row))
                yield value
        except DatasetError:
            raise
        except Exception as error:  # a connection lost mid-stream
            raise DatasetError(f"hub corpus '{source}' stopped while streaming ({type(error).__name__}: "
                               f"{(str(error).splitlines() or [''])[0]})") from error
    return source, rows()

