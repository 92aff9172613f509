"""A run's output folder: its results.json of one record per target (safe to resume), its rules and its lock.

Every file is written atomically (`dreamy.core.files`). A results.json also records the run that made it
(`run_info`: model, kind, settings, seed and a fingerprint of them), so a resumed run with other settings is refused instead of mixed in.

Big runs stay fast: a finished batch is not a rewrite of results.json but one line appended to
`records.jsonl` (the batch's records, fsynced), so its cost does not grow with the run. The store reads the
log on top of results.json on open, and folds it into results.json (one atomic rewrite, then the log is
removed) whenever the log has grown as large as results.json, when a resumed run opens the folder, and when
the run's lock is released; the rewrites cost a constant factor of what the run writes, however big it gets.
A kill at any moment loses nothing that was recorded: a torn last line is a batch never recorded (its
targets are redone on `--resume`), and a log that outlived its compaction is read again harmlessly.

Example:
    >>> import tempfile
    >>> store = ResultsStore(tempfile.mkdtemp())
    >>> store.add({"target": "conv2:3", "activation": 1.5})
    >>> store.done()
    {'conv2:3'}
"""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from dreamy.core.config import Config
from dreamy.core.files import fingerprint, json_safe, safe_name, write_json_atomic
from dreamy.core.folders import LOCK_NAME, OutDirError, check_out_folder, check_unlocked, folder_lock, remove_stale_temps

log = logging.getLogger(__name__)

LOG_NAME = "records.jsonl"
# The files a dreamy run writes into its output folder besides those its records name (images, plots,
# maxima PNGs); `clear_outputs` removes these and the recorded files, nothing else.
OUTPUT_NAMES = ("results.json", "index.html", LOG_NAME)
OUTPUT_FOLDERS = ("images", "maxima")  # removed only when nothing of the user's is left in them
# a recorded file's shape: `images/SAFE_0.png`, `images/SAFE_steps.png`, `maxima/SAFE_0.png` (SAFE: `safe_name(target)`)
_RUN_FILE = re.compile(r"(images|maxima)/(?P<stem>[A-Za-z0-9._-]+)_[A-Za-z0-9]+\.png")
TEMP_PNG = r".+\.png"  # the PNGs' temporary files (`write_atomic`) that a killed run leaves in those folders


RUN_FORMAT = 2  # 2: settings are a method config's fields (`run_info_of`); runs without "format" came before


def run_info(model: str, kind: str, settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """What identifies a run's results: model, kind, settings and seed, with a fingerprint of all four.

    Example:
        >>> info = run_info("tiny:cnn", "image", {"steps": 4}, 0)
        >>> info["fingerprint"] == run_info("tiny:cnn", "image", {"steps": 4}, 0)["fingerprint"]
        True
    """
    info = json.loads(json.dumps({"model": model, "kind": kind, "settings": settings, "seed": seed,
                                  "format": RUN_FORMAT}, sort_keys=True))
    info["fingerprint"] = fingerprint(info)
    return info


def run_info_of(model: str, config: Config, *, describe: bool = True) -> dict[str, Any]:
    """The `run_info` of a run of `config` on `model`: its settings are the config's fields and its method
    (the seed apart); `describe=False` (no output-side descriptions), an image `precision` other than fp32 and EPO
    `activation_slots` other than 0 are recorded only when set.

    Example:
        >>> from dreamy.vision import DreamConfig
        >>> info = run_info_of("tiny:cnn", DreamConfig(steps=4, seed=3))
        >>> info["kind"], info["seed"], info["settings"]["steps"], info["settings"]["method"]
        ('image', 3, 4, 'fourier')
    """
    settings = {"method": config.method, **config.to_dict()}
    settings.pop("seed", None)
    if settings.get("precision") == "fp32":
        settings.pop("precision")  # the default, recorded only when another is set: older runs keep their fingerprint
    if settings.get("activation_slots") == 0:
        settings.pop("activation_slots")  # the CLI's default, likewise (runs before the setting had none)
    if not describe:
        settings["describe"] = False
    return run_info(model, config.kind, settings, getattr(config, "seed", 0))


def comparable_run(run: dict[str, Any]) -> dict[str, Any]:
    """`run` as this version writes it: a run recorded before configs (no "format") has its settings read as
    the config they meant (`runs.legacy`); `OutDirError` when they cannot be.

    Example:
        >>> old = {"model": "tiny:cnn", "kind": "image", "settings": {"steps": 4, "lr": 0.05}, "seed": 0}
        >>> comparable_run(old)["settings"]["steps"], comparable_run(old)["format"]
        (4, 2)
    """
    if "format" in run:
        return run
    from dreamy.runs.legacy import config_of_settings

    try:
        config, describe = config_of_settings(run.get("kind"), run.get("settings") or {}, run.get("seed", 0))
    except ValueError as error:
        raise OutDirError(f"this results.json was written by an older dreamy whose settings this version cannot read "
                          f"({str(error).splitlines()[0]}); use --overwrite (overwrite=True) or another folder") from error
    return run_info_of(run.get("model"), config, describe=describe)


def run_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two `run_info`s (empty when they match).

    Example:
        >>> run_differences(run_info("m", "image", {"steps": 4}, 0), run_info("m", "image", {"steps": 50}, 0))
        ['steps: 4 there, 50 now']
    """
    old, new = comparable_run(old), comparable_run(new)
    if old.get("fingerprint") == new.get("fingerprint"):
        return []
    found = [f"{key}: {old.get(key)!r} there, {new.get(key)!r} now" for key in ("model", "kind", "seed")
             if old.get(key) != new.get(key)]
    if old.get("kind") != new.get("kind"):
        return found  # other settings of another kind differ by nature
    before, after = old.get("settings") or {}, new.get("settings") or {}
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            found.append(f"{key}: {_shown(before, key)} there, {_shown(after, key)} now")
    return found or ["settings fingerprint differs"]


def _shown(settings: dict[str, Any], key: str) -> str:
    return json.dumps(settings[key]) if key in settings else "unset"


def _user_entries(directory: Path) -> list[Path]:
    """What a folder holds, except this tool's lock file."""
    return [entry for entry in directory.iterdir() if entry.name != LOCK_NAME]


def prepare_out_dir(directory: str | Path, run: dict[str, Any], *, resume: bool = False, overwrite: bool = False) -> None:
    """Check, before any work, that `directory` can take the results of `run` (see `run_info`).

    Refused (`OutDirError`): `resume` and `overwrite` together, an empty path, a path that is a file, a dangling symlink or a symlink loop, a folder
    that cannot be written (`core.folders.check_out_folder`, the check every command shares), a folder
    another run is writing into (see `run_lock`), a non-empty folder without `resume` or `overwrite`, a `resume`
    into results of another run (the message names what differs) or into a broken results.json, and an
    `overwrite` of a non-empty folder that holds no dreamy results.json (nothing there is known to be a run's
    output). With `overwrite` the caller clears the old run's outputs with `clear_outputs` once its own checks
    pass. Nothing is created or removed here.

    Example:
        >>> import tempfile
        >>> prepare_out_dir(tempfile.mkdtemp(), run_info("tiny:cnn", "image", {}, 0))
    """
    if resume and overwrite:  # --overwrite would delete the very records --resume means to keep
        raise OutDirError("resume=True (--resume) keeps the finished records in the output folder and overwrite=True "
                          "(--overwrite) deletes them; give one of the two")
    directory = check_out_folder(directory)  # empty, a file, a dangling symlink or a loop, unwritable
    if not directory.exists():
        return
    check_unlocked(directory)
    if not _user_entries(directory):
        return
    if overwrite:
        if not (directory / "results.json").exists() and not (directory / "results.json").is_symlink():
            raise OutDirError(f"output folder {directory} is not empty and holds no dreamy results.json, so --overwrite "
                              "(overwrite=True) cannot tell a run's outputs from your own files; empty it or choose another folder")
        ResultsStore(directory)  # refuses a results.json (or record log) that is not ours
        return
    if not resume:
        raise OutDirError(f"output folder {directory} is not empty; add --resume (resume=True) to continue its run, "
                          "--overwrite (overwrite=True) to replace it, or choose another folder")
    store = ResultsStore(directory)
    if store.run is None:
        if store.records or (directory / "results.json").exists():
            raise OutDirError(f"{store.path} records no run settings (an older dreamy made it), so --resume cannot "
                              "check it is the same run; use --overwrite (overwrite=True) or another folder")
        return
    different = run_differences(store.run, run)
    if different:
        raise OutDirError(f"resume: {store.path} holds another run ({'; '.join(different)}); "
                          "use the same settings, --overwrite (overwrite=True), or another folder")


def _written_by_run(target: Any, name: str) -> bool:
    """Whether `name` has the shape of a file a run writes for `target`: `images/SAFE_i.png`, `images/SAFE_WHAT.png`
    (a plot) or `maxima/SAFE_i.png`, SAFE being `safe_name(target)`."""
    match = _RUN_FILE.fullmatch(name)
    return bool(match) and isinstance(target, str) and match["stem"] == safe_name(target)


def recorded_files(records: Iterable[dict[str, Any]]) -> list[str]:
    """The output-folder paths that `records` name (dreamed images, plots and dataset-maxima PNGs) and that have
    the shape a run gives them (`images/` or `maxima/`, the record's target's `safe_name`, `_` and a number or
    a plot's name, `.png`); a name of any other shape (an edited results.json's `notes.txt`) is left out.

    Example:
        >>> recorded_files([{"target": "a:1", "images": ["images/a_1-2b2c40a6_0.png", "notes.txt"],
        ...                  "plot": "images/a_1-2b2c40a6_steps.png", "maxima": [{"image": "maxima/a_1-2b2c40a6_0.png"},
        ...                  {"image": "maxima/b_1-34340f0e_0.png"}, {"text": "hi"}]}])
        ['images/a_1-2b2c40a6_0.png', 'images/a_1-2b2c40a6_steps.png', 'maxima/a_1-2b2c40a6_0.png']
    """
    names: list[str] = []
    for record in records:
        named = [name for name in record.get("images") or [] if isinstance(name, str)]
        if isinstance(record.get("plot"), str):
            named.append(record["plot"])
        named += [item["image"] for item in record.get("maxima") or []
                  if isinstance(item, dict) and isinstance(item.get("image"), str)]
        names += [name for name in named if _written_by_run(record.get("target"), name)]
    return list(dict.fromkeys(names))


def clear_outputs(directory: str | Path) -> None:
    """Remove what the dreamy run in `directory` wrote: its results.json, records.jsonl and index.html, and the
    files its records name that have the shape a run gives them (`recorded_files`: images, plots, maxima PNGs);
    then `images/` and `maxima/` when that left them empty. Every other file stays, also inside those folders,
    whatever an edited results.json names. A record naming a path outside the folder is ignored.

    Example:
        >>> import tempfile
        >>> clear_outputs(tempfile.mkdtemp())
    """
    directory = Path(directory)
    records = ResultsStore(directory).records if (directory / "results.json").is_file() else []
    root = directory.resolve()
    for name in recorded_files(records) + list(OUTPUT_NAMES):
        path = directory / name
        try:
            inside = path.parent.resolve().is_relative_to(root) and ".." not in Path(name).parts
        except OSError:
            continue
        if inside and (path.is_file() or path.is_symlink()):
            path.unlink()
    for name in OUTPUT_FOLDERS:
        folder = directory / name
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()


@contextmanager
def run_lock(directory: str | Path, command: str = "") -> Iterator[Path]:
    """Hold an exclusive lock on output folder `directory` (created if missing) while the block runs.

    One run writes into a folder at a time: a second `run_lock` on it, from any process, raises `OutDirError`
    naming the holder (pid, host, start, command). The lock is an `flock` on `DIR/.dreamy.lock`
    (`core.folders.folder_lock`), which the system releases when its process dies however it dies, so a killed
    run never leaves a stale lock; the file is removed on every normal exit. Re-entrant within one thread (an
    inner `run_lock` of the same folder is a no-op). Yields the folder. Taking it removes the temporary files a
    killed run's writes left (`.results.json.XXXXXXXX`, half-written PNGs); releasing it folds the record log
    into results.json (see the module docstring).

    Example:
        >>> import tempfile
        >>> with run_lock(tempfile.mkdtemp()) as folder:
        ...     (folder / LOCK_NAME).exists()
        True
    """
    folder = Path(directory)
    with folder_lock(folder, command) as outer:
        if outer:  # nobody else writes here now: what a killed run left half-written can go
            remove_stale_temps(folder, OUTPUT_NAMES)
            for name in OUTPUT_FOLDERS:
                remove_stale_temps(folder / name, pattern=TEMP_PNG)
        try:
            yield folder
        finally:
            if outer and (folder / LOG_NAME).exists():
                try:
                    ResultsStore(folder).compact()
                except (OSError, ValueError) as error:  # the log still holds every record; the next open reads it
                    log.warning("could not fold %s into results.json (%s); it stays and is read on the next open",
                                folder / LOG_NAME, error)


def _read_results(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The run and records of a results.json; `OutDirError` for anything that is not one."""
    def refuse(why: str) -> OutDirError:
        return OutDirError(f"{path} is not a dreamy results file ({why}); choose another folder or use --overwrite (overwrite=True)")

    if path.is_dir():
        raise refuse("it is a folder")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise refuse(str(error)) from error
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise refuse('expected {"records": [...]}')
    for i, record in enumerate(data["records"]):
        if not isinstance(record, dict) or not isinstance(record.get("target"), str):
            raise refuse(f"record {i} has no string 'target'")
    run = data.get("run")
    if run is not None and not isinstance(run, dict):
        raise refuse("'run' is not an object")
    return run, data["records"]


def _read_log(path: Path, fingerprint_of_run: str | None) -> list[list[dict[str, Any]]]:
    """The batches of records a records.jsonl holds, in order; a torn last line (no newline: a write cut short)
    is ignored, anything else that is not ours is an `OutDirError`."""
    def refuse(why: str) -> OutDirError:
        return OutDirError(f"{path} is not a dreamy record log ({why}); choose another folder or use --overwrite "
                           "(overwrite=True)")

    try:
        data = path.read_bytes()
    except OSError as error:
        raise refuse(error.strerror or str(error)) from error
    batches = []
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        try:
            entry = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise refuse(f"line {number}: {error}") from error
        if not isinstance(entry, dict) or not isinstance(entry.get("records"), list):
            raise refuse(f'line {number}: expected {{"records": [...]}}')
        if not all(isinstance(r, dict) and isinstance(r.get("target"), str) for r in entry["records"]):
            raise refuse(f"line {number}: a record has no string 'target'")
        if fingerprint_of_run and entry.get("run") and entry["run"] != fingerprint_of_run:
            raise refuse(f"line {number} is of another run (fingerprint {entry['run']}, results.json's "
                         f"{fingerprint_of_run})")
        batches.append(entry["records"])
    return batches


def _cut_torn_tail(handle: Any) -> None:
    """Truncate an append-mode file after its last newline (a line a killed writer left half-written)."""
    size = handle.seek(0, os.SEEK_END)
    end = size
    while end > 0:
        start = max(0, end - 65536)
        handle.seek(start)
        chunk = handle.read(end - start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            end = start + cut + 1
            break
        end = start
    if end != size:
        handle.truncate(end)


class ResultsStore:
    """`DIR/results.json` (with `DIR/records.jsonl`, see the module docstring): a list of records keyed by their
    `target`; re-adding a target replaces it (and moves it last).

    `run` (see `run_info`) is written beside the records; a store opened with a `run` refuses a file
    that holds another run's records. Adding costs one appended, fsynced line, however many records the run has.
    """

    def __init__(self, directory: str | Path, run: dict[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "results.json"
        self.log_path = self.directory / LOG_NAME
        self._records: dict[str, dict[str, Any]] = {}
        self.run = run
        self._results_bytes = 0
        self._log_bytes = 0
        self._saved_fingerprint = None  # of the run results.json records; log lines carry it
        if self.path.exists() or self.path.is_symlink():
            saved_run, records = _read_results(self.path)
            if run is not None and saved_run is not None and run_differences(saved_run, run):
                raise OutDirError(f"{self.path} holds another run ({'; '.join(run_differences(saved_run, run))})")
            self.run = run or saved_run
            self._saved_fingerprint = (saved_run or {}).get("fingerprint")
            self._results_bytes = self.path.stat().st_size
            self._put(records)
        if self.log_path.exists():
            for batch in _read_log(self.log_path, self._saved_fingerprint):
                self._put(batch)
            self._log_bytes = self.log_path.stat().st_size

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every target's record, in the order they were (last) added."""
        return list(self._records.values())

    @property
    def logged(self) -> bool:
        """Whether records.jsonl holds records that results.json does not have yet."""
        return self.log_path.exists()

    def _put(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self._records.pop(record["target"], None)
            self._records[record["target"]] = record

    def done(self, include_errors: bool = False) -> set[str]:
        """Targets with a finished record (failed ones only with `include_errors`)."""
        return {r["target"] for r in self._records.values() if include_errors or "error" not in r}

    def add(self, record: dict[str, Any]) -> None:
        """Add (or replace) one target's record, durably (see `add_many`)."""
        self.add_many([record])

    def add_many(self, records: Iterable[dict[str, Any]]) -> None:
        """Add several records as one batch: one fsynced line appended to records.jsonl (or, when the log has
        grown as large as results.json, one atomic rewrite of results.json). Durable on return."""
        new = list(records)
        if not new:
            return
        self._put(new)
        entry = {"records": new, **({"run": self.run["fingerprint"]} if self.run and self.run.get("fingerprint") else {})}
        line = (json.dumps(json_safe(entry), allow_nan=False) + "\n").encode()
        current = (self.run or {}).get("fingerprint")
        if not self.path.exists() or self._saved_fingerprint != current or self._log_bytes + len(line) >= self._results_bytes:
            self.compact()  # first records, a run results.json does not name yet (e.g. a legacy one), or a big log
            return
        with open(self.log_path, "ab+") as handle:
            _cut_torn_tail(handle)
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
            self._log_bytes = handle.tell()

    def compact(self) -> None:
        """Write every record into results.json (atomically) and remove records.jsonl."""
        write_json_atomic(self.path, {**({"run": self.run} if self.run else {}), "records": self.records})
        self._results_bytes = self.path.stat().st_size
        self._saved_fingerprint = (self.run or {}).get("fingerprint")
        try:
            self.log_path.unlink()
        except FileNotFoundError:
            pass
        self._log_bytes = 0
