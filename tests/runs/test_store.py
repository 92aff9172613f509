"""Atomic writes and the results store."""

import json
import os
import stat

import pytest

from dreamy.runs.store import OutDirError, ResultsStore, clear_outputs, prepare_out_dir, run_differences, run_info
from dreamy.core.files import safe_name, write_atomic, write_json_atomic


def test_store_adds_replaces_and_reloads(tmp_path):
    store = ResultsStore(tmp_path)
    store.add({"target": "a:1", "activation": 1.0})
    store.add_many([{"target": "b:2", "activation": 2.0}, {"target": "a:1", "activation": 3.0}])
    again = ResultsStore(tmp_path)
    assert [(r["target"], r["activation"]) for r in again.records] == [("b:2", 2.0), ("a:1", 3.0)]
    store.add({"target": "c:3", "error": "boom"})
    assert ResultsStore(tmp_path).done() == {"a:1", "b:2"}
    assert ResultsStore(tmp_path).done(include_errors=True) == {"a:1", "b:2", "c:3"}


def test_atomic_write_leaves_no_temp_files_and_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"v": 1})

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        write_atomic(path, "new")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_foreign_results_file_is_refused(tmp_path):
    (tmp_path / "results.json").write_text("not json")
    with pytest.raises(ValueError, match="not a dreamy results file"):
        ResultsStore(tmp_path)


def test_safe_names_are_readable_and_never_collide():
    assert safe_name("model.layers.5.mlp.down_proj@in:12").startswith("model.layers.5.mlp.down_proj_in_12-")
    assert safe_name("***").startswith("target-")
    assert safe_name("conv1:dir='a b.pt'") != safe_name("conv1:dir=a_b.pt")
    long = "0.5*" + "+".join(["layer1.0.conv1:1"] * 10)
    assert safe_name(long + "+conv1:1") != safe_name(long + "+conv1:2")
    assert len(safe_name(long)) <= 90


def test_written_files_are_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "index.html", "<html>")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "index.html").stat().st_mode) == 0o644


def test_json_never_holds_bare_nan(tmp_path):
    store = ResultsStore(tmp_path)
    store.add({"target": "a:1", "activation": float("nan"), "activations": [float("inf"), 1.0]})
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["records"][0]["activation"] is None


@pytest.mark.parametrize("content, why", [
    ('{"records": null}', "records"),
    ('{"records": [1, 2]}', "record 0"),
    ('{"records": [{"foo": 1}]}', "record 0"),
    ('{"records": [{"target": 5}]}', "record 0"),
    ('[1, 2]', "records"),
    ('{"records": [], "run": 3}', "run"),
])
def test_structurally_bad_results_files_are_refused_clearly(tmp_path, content, why):
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(OutDirError, match=f"not a dreamy results file.*{why}"):
        ResultsStore(tmp_path)
    assert (tmp_path / "results.json").read_text() == content


def test_a_results_json_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / "results.json").mkdir()
    with pytest.raises(OutDirError, match="it is a folder"):
        ResultsStore(tmp_path)


def test_run_differences_name_what_changed():
    old = run_info("tiny:cnn", "image", {"steps": 4, "lr": 0.05}, 0)
    assert run_differences(old, run_info("tiny:cnn", "image", {"steps": 4, "lr": 0.05}, 0)) == []
    assert run_differences(old, run_info("tiny:cnn", "image", {"steps": 50, "lr": 0.05}, 0)) == ["steps: 4 there, 50 now"]
    assert run_differences(old, run_info("tiny:lm", "prompt", {}, 0)) == [
        "model: 'tiny:cnn' there, 'tiny:lm' now", "kind: 'image' there, 'prompt' now"]
    assert run_differences(old, run_info("tiny:cnn", "image", {"steps": 4, "lr": 0.05}, 1)) == ["seed: 0 there, 1 now"]


def test_out_dir_rules(tmp_path):
    run = run_info("tiny:cnn", "image", {"steps": 4}, 0)
    with pytest.raises(OutDirError, match="empty"):
        prepare_out_dir("", run)
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    with pytest.raises(OutDirError, match="not empty.*--resume.*--overwrite"):
        prepare_out_dir(full, run)
    store = ResultsStore(full, run)
    store.add({"target": "a:1"})
    (full / "images").mkdir()
    prepare_out_dir(full, run, resume=True)
    with pytest.raises(OutDirError, match="steps: 4 there, 5 now"):
        prepare_out_dir(full, run_info("tiny:cnn", "image", {"steps": 5}, 0), resume=True)
    prepare_out_dir(full, run_info("tiny:cnn", "image", {"steps": 5}, 0), overwrite=True)
    assert (full / "results.json").exists()  # checking removes nothing
    clear_outputs(full)
    assert sorted(p.name for p in full.iterdir()) == ["notes.txt"]  # only dreamy's own outputs go


def test_clear_outputs_removes_only_what_the_run_recorded(tmp_path):
    from dreamy.core.files import safe_name

    a = safe_name("a:1")
    store = ResultsStore(tmp_path, run_info("tiny:cnn", "image", {}, 0))
    for name in (f"images/{a}_0.png", f"images/{a}_steps.png", f"maxima/{a}_0.png", "images/holiday.png",
                 "maxima/notes.txt", "index.html", "mine.txt"):
        write_atomic(tmp_path / name, b"x")
    store.add({"target": "a:1", "images": [f"images/{a}_0.png"], "plot": f"images/{a}_steps.png",
               "maxima": [{"image": f"maxima/{a}_0.png"}, {"image": "../outside.png"}]})
    (tmp_path.parent / "outside.png").write_bytes(b"keep")
    clear_outputs(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "images", "images/holiday.png", "maxima", "maxima/notes.txt", "mine.txt"]
    assert (tmp_path.parent / "outside.png").read_bytes() == b"keep"


def test_overwrite_refuses_a_folder_that_holds_no_run(tmp_path):
    run = run_info("tiny:cnn", "image", {}, 0)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "holiday.png").write_bytes(b"x")
    with pytest.raises(OutDirError, match="holds no dreamy results.json.*--overwrite"):
        prepare_out_dir(tmp_path, run, overwrite=True)
    (tmp_path / "results.json").write_text('{"records": [1]}')
    with pytest.raises(OutDirError, match="not a dreamy results file"):
        prepare_out_dir(tmp_path, run, overwrite=True)
    assert (tmp_path / "images" / "holiday.png").exists()


def _hold_lock_in_child(folder):
    import subprocess
    import sys

    code = ("import sys, time\nfrom dreamy.runs.store import run_lock\nwith run_lock(sys.argv[1], 'holder-cmd'):\n"
            "    print('held', flush=True)\n    time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_run_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    from dreamy.runs.store import LOCK_NAME, check_unlocked, run_lock

    child = _hold_lock_in_child(tmp_path)
    try:
        with pytest.raises(OutDirError, match=f"in use by another dream run \\(pid {child.pid} .*holder-cmd"):
            with run_lock(tmp_path):
                pass
        with pytest.raises(OutDirError, match="in use"):
            check_unlocked(tmp_path)
        with pytest.raises(OutDirError, match="in use"):
            prepare_out_dir(tmp_path, run_info("tiny:cnn", "image", {}, 0), overwrite=True)
    finally:
        child.kill()
        child.wait()
    # the system dropped the dead holder's lock: its file is left, and it no longer blocks anyone
    assert (tmp_path / LOCK_NAME).exists()
    check_unlocked(tmp_path)
    with run_lock(tmp_path):
        with run_lock(tmp_path):  # re-entrant in one thread
            check_unlocked(tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()
    prepare_out_dir(tmp_path, run_info("tiny:cnn", "image", {}, 0))  # the lock file alone is no content


def test_run_lock_is_released_when_the_block_raises(tmp_path):
    from dreamy.runs.store import run_lock

    with pytest.raises(KeyboardInterrupt):
        with run_lock(tmp_path):
            raise KeyboardInterrupt
    with run_lock(tmp_path):
        pass


def test_another_thread_is_refused(tmp_path):
    import threading

    from dreamy.runs.store import run_lock

    errors = []
    with run_lock(tmp_path):
        def other():
            try:
                with run_lock(tmp_path):
                    pass
            except OutDirError as error:
                errors.append(str(error))
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "in use" in errors[0]


# ---- issue 19: the record log keeps a batch's cost independent of the run's size --------------------------------

def _record(i, size=200):
    return {"target": f"conv3:{i}", "activation": float(i), "history": [0.5] * size}


def test_adding_to_a_big_run_appends_one_line_and_leaves_results_json_alone(tmp_path):
    from dreamy.runs.store import LOG_NAME

    store = ResultsStore(tmp_path, run_info("tiny:cnn", "image", {}, 0))
    store.add_many([_record(i, 2000) for i in range(300)])  # ~ 3 MB of results.json
    before = (tmp_path / "results.json").stat()
    for i in range(300, 320):
        store.add(_record(i))
    after = (tmp_path / "results.json").stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    lines = (tmp_path / LOG_NAME).read_bytes().splitlines()
    assert len(lines) == 20 and all(len(line) < 5000 for line in lines)
    again = ResultsStore(tmp_path)
    assert [r["target"] for r in again.records] == [f"conv3:{i}" for i in range(320)]
    assert again.records[-1] == json.loads(json.dumps(_record(319)))


def test_rewrites_cost_a_constant_factor_of_what_the_run_writes(tmp_path, monkeypatch):
    import dreamy.runs.store as store_module

    written = []
    real = store_module.write_json_atomic

    def counted(path, obj):
        real(path, obj)
        written.append(Path(path).stat().st_size)

    from pathlib import Path

    monkeypatch.setattr(store_module, "write_json_atomic", counted)
    store = ResultsStore(tmp_path, run_info("tiny:cnn", "image", {}, 0))
    for i in range(600):
        store.add(_record(i))
    store.compact()
    final = (tmp_path / "results.json").stat().st_size
    assert sum(written) < 5 * final  # rewriting results.json per batch wrote ~300x the final size
    assert len(written) < 25


def test_a_torn_last_line_is_a_batch_never_recorded_and_the_next_add_repairs_it(tmp_path):
    from dreamy.runs.store import LOG_NAME

    store = ResultsStore(tmp_path, run_info("tiny:cnn", "image", {}, 0))
    store.add_many([_record(i, 500) for i in range(10)])
    store.add(_record(10))
    with open(tmp_path / LOG_NAME, "ab") as log:
        log.write(b'{"records": [{"target": "conv3:11", "activ')  # killed mid-write
    reopened = ResultsStore(tmp_path)
    assert reopened.done() == {f"conv3:{i}" for i in range(11)}
    reopened.add(_record(12))
    assert ResultsStore(tmp_path).done() == {f"conv3:{i}" for i in range(11)} | {"conv3:12"}
    lines = (tmp_path / LOG_NAME).read_bytes().splitlines()
    assert [json.loads(line)["records"][0]["target"] for line in lines] == ["conv3:10", "conv3:12"]


@pytest.mark.parametrize("content, why", [
    (b"not json\n{}\n", "line 1"),
    (b'{"records": 3}\n', 'line 1: expected {"records"'),
    (b'{"records": [{"foo": 1}]}\n', "no string 'target'"),
    (b'{"records": [], "run": "0123456789abcdef"}\n', "of another run"),
])
def test_a_record_log_that_is_not_ours_is_refused(tmp_path, content, why):
    from dreamy.runs.store import LOG_NAME

    ResultsStore(tmp_path, run_info("tiny:cnn", "image", {}, 0)).add(_record(0))
    (tmp_path / LOG_NAME).write_bytes(content)
    with pytest.raises(OutDirError, match=f"not a dreamy record log.*{why}"):
        ResultsStore(tmp_path)
    with pytest.raises(OutDirError, match="not a dreamy record log"):
        prepare_out_dir(tmp_path, run_info("tiny:cnn", "image", {}, 0), resume=True)


def test_a_kill_between_compaction_and_removing_the_log_reads_the_same(tmp_path):
    from dreamy.runs.store import LOG_NAME

    store = ResultsStore(tmp_path, run_info("tiny:cnn", "image", {}, 0))
    store.add_many([_record(i, 500) for i in range(5)])
    for i in (5, 2, 6, 2):  # a target re-added moves last
        store.add(_record(i))
    log = (tmp_path / LOG_NAME).read_bytes()
    expected = [r["target"] for r in ResultsStore(tmp_path).records]
    assert expected == ["conv3:0", "conv3:1", "conv3:3", "conv3:4", "conv3:5", "conv3:6", "conv3:2"]
    store.compact()
    (tmp_path / LOG_NAME).write_bytes(log)  # as if killed after the rename, before the unlink
    assert [r["target"] for r in ResultsStore(tmp_path).records] == expected


def test_releasing_the_run_lock_folds_the_log_into_results_json(tmp_path):
    from dreamy.runs.store import LOG_NAME, run_lock

    with run_lock(tmp_path):
        store = ResultsStore(tmp_path, run_info("tiny:cnn", "image", {}, 0))
        store.add_many([_record(i, 500) for i in range(5)])
        store.add(_record(5))
        assert (tmp_path / LOG_NAME).exists()
        with run_lock(tmp_path):  # an inner holder does not fold
            pass
        assert (tmp_path / LOG_NAME).exists()
    assert not (tmp_path / LOG_NAME).exists()
    assert len(json.loads((tmp_path / "results.json").read_text())["records"]) == 6


def test_taking_the_run_lock_removes_what_a_killed_run_half_wrote(tmp_path):
    from dreamy.runs.store import run_lock

    (tmp_path / "images").mkdir()
    for name in (".results.json.a1b2c3d4", ".index.html.zzzzzzzz", "images/.conv3_1-74bf4bd9_0.png.k2j3h4g5",
                 "images/holiday.png", ".my.notes.abcdefgh"):
        (tmp_path / name).write_bytes(b"x")
    with run_lock(tmp_path):
        pass
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        ".my.notes.abcdefgh", "images", "images/holiday.png"]


def test_clear_outputs_removes_the_log_and_the_files_its_records_name(tmp_path):
    from dreamy.core.files import safe_name
    from dreamy.runs.store import LOG_NAME

    store = ResultsStore(tmp_path, run_info("tiny:cnn", "image", {}, 0))
    store.add_many([_record(i, 500) for i in range(5)])
    late = f"images/{safe_name('late:1')}_0.png"
    write_atomic(tmp_path / late, b"x")
    store.add({"target": "late:1", "images": [late]})
    assert (tmp_path / LOG_NAME).exists()
    clear_outputs(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_records_of_a_run_results_json_does_not_name_yet_are_never_only_logged(tmp_path):
    from dreamy.runs.store import LOG_NAME

    (tmp_path / "results.json").write_text(json.dumps({"records": [_record(i, 2000) for i in range(20)]}))  # no run
    run = run_info("tiny:cnn", "image", {}, 0)
    store = ResultsStore(tmp_path, run)
    store.add(_record(20))
    assert not (tmp_path / LOG_NAME).exists()  # compacted: results.json now names the run the records belong to
    assert json.loads((tmp_path / "results.json").read_text())["run"] == run
    store.add(_record(21))
    assert (tmp_path / LOG_NAME).exists() and len(ResultsStore(tmp_path, run).records) == 22


def test_epo_runs_record_activation_slots_only_when_not_zero():
    from dreamy.language import EPOConfig
    from dreamy.runs.store import run_info_of

    assert "activation_slots" not in run_info_of("tiny:lm", EPOConfig(activation_slots=0))["settings"]  # as before it existed
    assert run_info_of("tiny:lm", EPOConfig(activation_slots=2))["settings"]["activation_slots"] == 2
    assert run_info_of("tiny:lm", EPOConfig())["fingerprint"] != run_info_of("tiny:lm", EPOConfig(activation_slots=0))["fingerprint"]


# ---- issue 41: --overwrite deletes only what a run writes; --resume with --overwrite refused -----------------

def test_overwrite_never_deletes_a_file_an_edited_results_json_names(tmp_path):
    from dreamy.core.files import safe_name

    a = safe_name("a:1")
    store = ResultsStore(tmp_path, run_info("tiny:cnn", "image", {}, 0))
    names = ["notes.txt", "images/holiday.png", f"images/{safe_name('b:1')}_0.png", f"images/{a}.png",
             f"images/{a}_0.jpg", f"data/{a}_0.png", f"images/sub/{a}_0.png", f"images/{a}_0.png"]
    for name in names:
        write_atomic(tmp_path / name, b"mine")
    store.add({"target": "a:1", "images": names[:-1], "plot": "notes.txt", "maxima": [{"image": n} for n in names]})
    clear_outputs(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(names[:-1])


def test_resume_and_overwrite_together_are_refused(tmp_path):
    store = ResultsStore(tmp_path, run_info("tiny:cnn", "image", {}, 0))
    store.add({"target": "a:1"})
    with pytest.raises(OutDirError, match=r"resume=True \(--resume\).*overwrite=True \(--overwrite\).*one of the two"):
        prepare_out_dir(tmp_path, run_info("tiny:cnn", "image", {}, 0), resume=True, overwrite=True)
    assert ResultsStore(tmp_path).done() == {"a:1"}
