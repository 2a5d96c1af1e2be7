"""`kbert create-data --runner beam`: the local runner's bytes, resumable, clear errors."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from kbert import features
from kbert.cli import main as kbert_main
from tfrecords_tools import corpora
from tfrecords_tools.create_pretraining_data import create_pretraining_data
from tfrecords_tools.instances import ShardStats
from tfrecords_tools.shard_files import ShardJob, ShardLog
from tfrecords_tools.vocab import SPECIAL_TOKENS, write_vocab

# Beam's own DirectRunner engine (FnApiRunner) with two worker processes: `--runner=DirectRunner`
# would first try to download the Prism runner (Beam >= 2.68) and use it where it can.
DIRECT_RUNNER = "--runner=FnApiRunner --direct_num_workers=2 --direct_running_mode=multi_processing"
SETTINGS = {"max_seq_length": "32", "max_predictions_per_seq": "4", "dupe_factor": "2"}
NUM_SHARDS = 5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(glob of 3 text files in Google's layout, one with invalid UTF-8; vocab file)."""
    work = tmp_path_factory.mktemp("beam_corpus")
    words = set()
    for f in range(3):
        lines = []
        for d in range(12):
            for s in range(2 + (d % 5)):
                sentence = " ".join([f"f{f}d{d}s{s}"] * 5)
                words.add(f"f{f}d{d}s{s}")
                lines.append(sentence)
            lines.append("")
        data = "\n".join(lines).encode()
        if f == 1:
            data = data.replace(b"f1d3s1 ", b"f1d3s1 \xff ", 1)
        (work / f"part-{f}.txt").write_bytes(data)
    vocab_file = str(work / "vocab.txt")
    write_vocab(list(SPECIAL_TOKENS) + sorted(words), vocab_file)
    return str(work / "part-*.txt"), vocab_file


def create_data_argv(corpus, output, *extra):
    input_glob, vocab_file = corpus
    argv = ["create-data", "--quiet", "--input_file", input_glob, "--vocab_file", vocab_file]
    argv += ["--output_file", str(output), "--num_shards", str(NUM_SHARDS)]
    for name, value in SETTINGS.items():
        argv += [f"--{name}", value]
    return argv + list(extra)


def shard_files(directory):
    return sorted(f for f in os.listdir(directory) if ".tfrecord" in f)


def read_bytes(directory):
    return {name: (directory / name).read_bytes() for name in shard_files(directory)}


def read_metadata_json(directory):
    return json.loads((directory / features.METADATA_FILENAME).read_text())


@pytest.fixture(scope="module")
def local_set(corpus, tmp_path_factory):
    """The local runner's shards and metadata of the corpus."""
    out = tmp_path_factory.mktemp("local")
    assert kbert_main(create_data_argv(corpus, out / "train")) == 0
    return out


@pytest.fixture(scope="module")
def beam_set(corpus, tmp_path_factory):
    """The same command on Beam's DirectRunner, two worker processes: (directory, summary)."""
    out = tmp_path_factory.mktemp("beam")
    input_glob, vocab_file = corpus
    summary = create_pretraining_data(
        input_glob,
        str(out / "train"),
        vocab_file,
        **{name: int(value) for name, value in SETTINGS.items()},
        num_shards=NUM_SHARDS,
        runner="beam",
        beam_pipeline_options=DIRECT_RUNNER,
    )
    return out, summary


def test_beam_writes_the_local_runners_shards_and_metadata(local_set, beam_set):
    beam_dir, _ = beam_set
    assert len(shard_files(local_set)) == NUM_SHARDS
    assert read_bytes(beam_dir) == read_bytes(local_set)
    assert read_metadata_json(beam_dir) == read_metadata_json(local_set)
    assert not [f for f in os.listdir(beam_dir) if "incomplete" in f or "state" in f]


def test_beam_counters_sum_to_the_metadata_counts(beam_set):
    beam_dir, summary = beam_set
    metadata = features.read_metadata(str(beam_dir))
    counters = summary.beam_counters
    assert counters["shards"] == NUM_SHARDS
    assert counters["num_instances"] == metadata.num_instances > 0
    assert {"0": counters["num_is_next"], "1": counters["num_is_random"]} == (
        metadata.nsp_label_counts
    )
    assert counters["num_documents"] == metadata.extra["num_documents"] == 36
    assert counters["invalid_utf8_replaced"] == metadata.extra["invalid_utf8_replaced"] == 1


def test_rerun_remakes_a_deleted_shard_and_keeps_the_others(corpus, local_set, beam_set, tmp_path):
    beam_dir, _ = beam_set
    out = tmp_path / "set"
    shutil.copytree(beam_dir, out)
    deleted = shard_files(out)[2]
    os.remove(out / deleted)
    # What a killed attempt at the shard leaves behind: a partial file under a temporary name.
    (out / f"{deleted}.0123456789ab.incomplete").write_bytes(b"partial")
    kept = {name: os.stat(out / name) for name in shard_files(out) if ".incomplete" not in name}
    argv = create_data_argv(corpus, out / "train", "--runner", "beam")
    assert kbert_main(argv + [f"--beam_pipeline_options={DIRECT_RUNNER}"]) == 0
    assert read_bytes(out) == read_bytes(local_set)
    for name, before in kept.items():  # not rewritten
        after = os.stat(out / name)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name
    assert read_metadata_json(out) == read_metadata_json(local_set)


def test_planning_reads_only_file_sizes_and_workers_find_the_boundaries(corpus, tmp_path):
    input_glob, _ = corpus
    text_files = corpora.TextFiles(input_glob)
    whole = list(text_files)
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    for path in text_files.files:  # planning a corpus that cannot be read
        shutil.move(path, hidden / os.path.basename(path))
    plan = text_files.slices(7)
    assert sum(plan.nominal_bytes(k) for k in range(7)) == text_files.total_bytes
    for path in text_files.files:
        shutil.move(hidden / os.path.basename(path), path)
    # Each slice, resolved on its own as a worker does, ends where the next one starts.
    slices = [text_files.slices(7)[k] for k in range(7)]
    assert [document for segments in slices for document in text_files.read(segments)] == whole


def test_a_retried_attempt_finds_the_shard_an_earlier_attempt_completed(tmp_path):
    # Dataflow retries a failed bundle whole, shards that were completed in it included.
    name = str(tmp_path / "train-00000-of-00001.tfrecord")
    log = ShardLog(str(tmp_path / "train.create_data_state"), "settings-a")
    job = ShardJob(None, None, None, [name], None, log)
    assert job.completed(0) is None
    log.record(name, ShardStats(num_instances=3, num_documents=2))
    assert job.completed(0) is None  # recorded, but the shard file is not there
    (tmp_path / "train-00000-of-00001.tfrecord").write_bytes(b"")
    assert job.completed(0) == ShardStats(num_instances=3, num_documents=2)
    other_settings = ShardJob(None, None, None, [name], None, ShardLog(log.directory, "b"))
    assert other_settings.completed(0) is None


BAD_OPTIONS = {
    "bad_value": ("--direct_num_workers=two", "argument --direct_num_workers: invalid int value"),
    "unknown_option": ("--direct_num_worker=2", "not a Beam pipeline option: --direct_num_worker"),
    "unknown_runner": ("--runner=NoSuchRunner", "Unexpected pipeline runner: NoSuchRunner"),
    "unbalanced_quote": ("--job_name='x", "No closing quotation"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_beam_pipeline_options_are_a_one_line_error(case, corpus, tmp_path, capsys):
    options, message = BAD_OPTIONS[case]
    argv = create_data_argv(corpus, tmp_path / "out" / "train", "--runner", "beam")
    assert kbert_main(argv + [f"--beam_pipeline_options={options}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("kbert create-data: error: --beam_pipeline_options") and "\n" not in err
    assert message in err
    assert not (tmp_path / "out").exists() or not shard_files(tmp_path / "out")


def test_beam_options_without_the_beam_runner_are_refused(corpus, tmp_path, capsys):
    argv = create_data_argv(corpus, tmp_path / "train", f"--beam_pipeline_options={DIRECT_RUNNER}")
    assert kbert_main(argv) == 1
    assert "--beam_pipeline_options is for --runner beam only" in capsys.readouterr().err


def test_without_the_extra_local_runs_work_and_beam_is_a_one_line_error(corpus, tmp_path):
    # `None` in sys.modules makes `import apache_beam` fail as if it were not installed.
    script = (
        "import json, sys; sys.modules['apache_beam'] = None; from kbert.cli import main; "
        "local, beam = json.loads(sys.argv[1]); print('local run:', main(local)); "
        "sys.exit(main(beam))"
    )
    local = create_data_argv(corpus, tmp_path / "local" / "train")
    beam = create_data_argv(corpus, tmp_path / "beam" / "train", "--runner", "beam")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps([local, beam])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "local run: 0" in result.stdout
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("kbert create-data")]
    assert errors == [
        "kbert create-data: error: --runner beam needs Apache Beam, an optional extra: "
        'pip install "kbert[beam]"'
    ]
    assert "Traceback" not in result.stderr
