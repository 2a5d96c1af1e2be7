"""`kbert.io`: outputs appear whole or not at all, and bad inputs name their file."""

import os
import signal
import subprocess
import sys
import time

import pytest

from kbert import io


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = str(tmp_path / "results.json")
    io.write_json(path, {"step": 1})

    with pytest.raises(RuntimeError, match="interrupted"), io.atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write('{"st')
        raise RuntimeError("interrupted")

    assert io.read_json(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["results.json"]


def test_temporary_names_keep_the_extension_and_differ_per_write():
    first, second = io.temporary_path("run/model.keras"), io.temporary_path("run/model.keras")
    assert first != second
    for name in (first, second):
        assert name.startswith("run/.tmp-") and name.endswith("-model.keras")


def test_text_and_bytes_are_written_whole(tmp_path):
    io.write_atomically(str(tmp_path / "a.txt"), "é\n")
    io.write_atomically(str(tmp_path / "b.bin"), b"\x00\x01")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "é\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_bad_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken.json: not valid JSON"):
        io.read_json(str(path))
    with pytest.raises(FileNotFoundError, match=r"gone.json: no such run configuration"):
        io.read_json(str(tmp_path / "gone.json"), "run configuration")


@pytest.mark.parametrize("value", [0, -3, 2.0, "4", True, None])
def test_positive_int_check_names_the_setting(value):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        io.check_positive_int("batch_size", value)


def test_a_model_file_resolves_from_a_run_directory_or_a_keras_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match=r"run/model.keras: no model to evaluate"):
        io.resolve_model_file(str(run), action="evaluate")
    (run / "model.keras").write_bytes(b"")
    assert io.resolve_model_file(str(run)) == str(run / "model.keras")
    assert io.resolve_model_file(str(run / "model.keras")) == str(run / "model.keras")


def test_publishing_replaces_a_directory_and_leaves_no_sibling(tmp_path):
    staging, published = tmp_path / "staging", tmp_path / "published"
    (staging / "sub").mkdir(parents=True)
    (staging / "sub" / "new.txt").write_text("new")
    published.mkdir()
    (published / "old.txt").write_text("old")

    io.publish_directory(str(staging), str(published))

    assert sorted(os.listdir(tmp_path)) == ["published", "staging"]
    assert os.listdir(published) == ["sub"] and (published / "sub" / "new.txt").read_text() == "new"


def test_a_publish_killed_between_its_renames_is_repaired_by_the_next(tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "v.txt").write_text("new")
    # What a kill between the two renames leaves: the old version aside, the new copy unrenamed,
    # and no preset under its name. Another destination's temporary is not ours to touch.
    old = tmp_path / ".old-0123abcd-preset"
    old.mkdir()
    (old / "v.txt").write_text("old")
    (tmp_path / ".tmp-89abcdef-preset").mkdir()
    (tmp_path / ".tmp-01234567-my-preset").mkdir()
    io.publish_directory(str(staging), str(tmp_path / "preset"))
    assert (tmp_path / "preset" / "v.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == [".tmp-01234567-my-preset", "preset", "staging"]


def write_version(directory, version):
    """A small tree whose every file holds `version`: a reader can tell a mixed or partial one."""
    (directory / "sub").mkdir(parents=True)
    for name in ("a.txt", "sub/b.txt", "sub/c.txt"):
        (directory / name).write_text(str(version))


# Polls a directory's files as fast as it can and counts the reads that find one absent or not
# whole; plain Python, so it starts at once and runs beside the publisher, not under its GIL.
WATCHER = """
import os, sys
destination, stop = sys.argv[1], sys.argv[2]
files = ("a.txt", "sub/b.txt", "sub/c.txt")
seen = absent = partial = 0
while not os.path.exists(stop):
    for name in files:
        try:
            with open(os.path.join(destination, name)) as f:
                partial += f.read() not in ("0", "1")
            seen += 1
        except OSError:
            absent += 1
print(seen, absent, partial)
"""


def test_a_published_directory_is_never_absent_nor_partial_while_it_is_replaced(tmp_path):
    destination, stop = tmp_path / "published", tmp_path / "stop"
    staging = [tmp_path / f"v{version}" for version in range(2)]
    for version, directory in enumerate(staging):
        write_version(directory, version)
    io.publish_directory(str(staging[0]), str(destination))
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCHER, str(destination), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for i in range(100):
            io.publish_directory(str(staging[i % 2]), str(destination))
    finally:
        stop.touch()
        seen, absent, partial = map(int, watcher.communicate(timeout=60)[0].split())
    assert seen > 1000 and (absent, partial) == (0, 0)
    assert sorted(os.listdir(tmp_path)) == ["published", "stop", "v0", "v1"]


PUBLISHER = """
import sys
from kbert import io
staging, destination = sys.argv[1:3]
io.publish_directory(staging + "0", destination)
print("published", flush=True)
while True:
    io.publish_directory(staging + "0", destination)
    io.publish_directory(staging + "1", destination)
"""


@pytest.mark.parametrize("seconds", [0.05, 0.3])
def test_a_publish_killed_at_any_instant_leaves_one_whole_version(tmp_path, seconds):
    destination = tmp_path / "published"
    for version in range(2):
        write_version(tmp_path / f"v{version}", version)
    publisher = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(tmp_path / "v"), str(destination)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert publisher.stdout.readline() == "published\n"
        time.sleep(seconds)
        publisher.send_signal(signal.SIGKILL)
    finally:
        publisher.kill()
        publisher.wait(timeout=60)
    versions = {(destination / name).read_text() for name in ("a.txt", "sub/b.txt", "sub/c.txt")}
    assert len(versions) == 1 and sorted(os.listdir(destination)) == ["a.txt", "sub"]
    io.publish_directory(str(tmp_path / "v0"), str(destination))
    assert sorted(os.listdir(tmp_path)) == ["published", "v0", "v1"]
