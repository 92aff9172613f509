"""dreamy/core/folders.py: the output-folder check every command shares, the folder lock, stale temporary files."""

import os
import threading

import pytest

from dreamy.core.files import write_atomic
from dreamy.core.folders import LOCK_NAME, OutDirError, check_out_folder, check_unlocked, folder_lock, remove_stale_temps


def test_usable_folders_pass_and_nothing_is_left_behind(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for out in [tmp_path, tmp_path / "new", tmp_path / "new" / "deeper", tmp_path / "link", tmp_path / "link" / "sub"]:
        assert check_out_folder(out) == out
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["link", "real"]


@pytest.mark.parametrize("make, words", [
    (lambda d: "", "--out is empty"),
    (lambda d: "   ", "--out is empty"),
    (lambda d: (d / "f").write_text("x") and d / "f", "is a file, not a folder; give a folder"),
    (lambda d: (d / "f").write_text("x") and d / "f" / "sub", "cannot be made: '"),
    (lambda d: (d / "l").symlink_to(d / "nowhere") or d / "l", "is a symlink to '"),
    (lambda d: (d / "l").symlink_to(d / "nowhere") or d / "l" / "sub", "which does not exist"),
    (lambda d: (d / "l").symlink_to("l") or d / "l", "is a symlink loop"),
    (lambda d: ((d / "a").symlink_to(d / "b"), (d / "b").symlink_to(d / "a")) and d / "a" / "x" / "y", "symlink loop"),
    (lambda d: "/sys/dreamy-test", "not writable"),
    (lambda d: "/proc/x/y", "not writable"),
])
def test_unusable_folders_are_refused_in_one_line(tmp_path, make, words):
    out = make(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(OutDirError) as caught:
        check_out_folder(out)
    assert words in str(caught.value) and len(str(caught.value).splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(OutDirError, match="not writable"):
            check_out_folder(tmp_path / "out")
    finally:
        tmp_path.chmod(0o755)


def test_folder_lock_is_reentrant_in_a_thread_and_refuses_another(tmp_path):
    errors = []
    with folder_lock(tmp_path, "first") as outer:
        with folder_lock(tmp_path) as inner:
            assert (outer, inner) == (True, False)
        assert (tmp_path / LOCK_NAME).exists()  # the inner exit did not release it
        thread = threading.Thread(target=lambda: errors.append(_refusal(tmp_path)))
        thread.start()
        thread.join()
        check_unlocked(tmp_path)  # this thread holds it: not "in use"
    assert "in use by another dream run" in errors[0] and "first" in errors[0]
    assert not (tmp_path / LOCK_NAME).exists()


def _refusal(folder):
    try:
        with folder_lock(folder):
            return "let in"
    except OutDirError as error:
        return str(error)


def test_stale_temps_of_the_named_files_are_removed_and_nothing_else(tmp_path):
    for name in (".checkpoint.pt.abcd_123", ".results.json.zz99zz99", ".a-1f2e3d4c_0.png.q1w2e3r4", ".checkpoint.pt",
                 ".checkpoint.pt.TOOLONG12", ".other.txt.abcdefgh", "checkpoint.pt"):
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temps(tmp_path, ["checkpoint.pt", "results.json"], pattern=r".+\.png")
    assert sorted(p.name for p in removed) == [".a-1f2e3d4c_0.png.q1w2e3r4", ".checkpoint.pt.abcd_123",
                                               ".results.json.zz99zz99"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".checkpoint.pt", ".checkpoint.pt.TOOLONG12",
                                                          ".other.txt.abcdefgh", "checkpoint.pt"]


def test_the_temp_pattern_is_the_one_write_atomic_uses(tmp_path, monkeypatch):
    def broken(src, dst):
        raise KeyboardInterrupt  # as if killed between the write and the rename; the file is left

    monkeypatch.setattr(os, "unlink", lambda path: None)  # a SIGKILL runs no cleanup
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "checkpoint.pt", b"data")
    monkeypatch.undo()
    (left,) = tmp_path.iterdir()
    assert remove_stale_temps(tmp_path, ["checkpoint.pt"]) == [left] and not any(tmp_path.iterdir())


def test_a_folder_the_lock_made_for_nothing_is_removed(tmp_path):
    with folder_lock(tmp_path / "empty"):
        assert (tmp_path / "empty" / LOCK_NAME).exists()
    with folder_lock(tmp_path / "used") as outer:
        (tmp_path / "used" / "result.txt").write_text("x")
    with folder_lock(tmp_path):  # a folder that was there stays, empty or not
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"] and outer


def test_foreign_entries_are_what_a_run_did_not_write(tmp_path):
    from dreamy.core.folders import foreign_entries

    assert foreign_entries(tmp_path / "missing") == []
    for name in ("cfg.json", ".cfg.json.abcd1234", "batch-3.json", LOCK_NAME, "notes.txt", ".notes.txt.abcd1234"):
        (tmp_path / name).write_text("x")
    (tmp_path / "batch-4.json").mkdir()  # a folder of a file's name is not the run's file
    assert [p.name for p in foreign_entries(tmp_path, ["cfg.json"], pattern=r"batch-\d+\.json")] == [
        ".notes.txt.abcd1234", "batch-4.json", "notes.txt"]


def test_lock_holder_names_the_process_holding_the_folder(tmp_path):
    import subprocess
    import sys

    from dreamy.core.folders import lock_holder

    code = ("import sys, time; from dreamy.core.folders import folder_lock\n"
            "with folder_lock(sys.argv[1], 'the holder'):\n    print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        assert f"pid {child.pid} on " in lock_holder(tmp_path) and "the holder" in lock_holder(tmp_path)
    finally:
        child.kill()
        child.wait()
    assert lock_holder(tmp_path) is None  # the system released a killed holder's lock
    with folder_lock(tmp_path):
        assert lock_holder(tmp_path) is None  # this thread's own lock is nobody else's
