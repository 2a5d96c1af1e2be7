"""`create_pretraining_data`'s shards made by an Apache Beam pipeline (the `kbert[beam]` extra).

The unit of work is one shard, a pure function of (its byte range of the corpus, the seed):
`Create(shard indices) | Reshuffle | ParDo(make the shard)`. The driver reads only file sizes;
each worker finds the document boundaries of its own range (`corpora.Slices`), writes the shard
under a temporary name, renames it and records its counts (`shard_files`), so the shards are
byte for byte the local runner's, a retried worker leaves one version of a shard, and a rerun
keeps complete shards. The counts are also Beam counters (namespace `kbert.create_data`),
visible while the job runs; the metadata sums the shards' records, which a retry cannot count
twice.

Only `create_pretraining_data(runner="beam")` imports this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shlex

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from kbert.errors import IncompleteRunError, SettingError
from tfrecords_tools import corpora
from tfrecords_tools.instances import ShardStats
from tfrecords_tools.shard_files import ShardJob

NAMESPACE = "kbert.create_data"
FLAG = "--beam_pipeline_options"


def parse_pipeline_options(text: str | None) -> PipelineOptions:
    """Beam's `PipelineOptions` from one string of flags; a value Beam rejects or an option it
    does not know is a one-line ValueError (Beam itself prints usage and exits, or ignores it).

    Examples:
    >>> parse_pipeline_options("--runner=FnApiRunner --direct_num_workers=2").get_all_options()[
    ...     "direct_num_workers"]
    2
    >>> parse_pipeline_options("--direct_num_workers=two")
    Traceback (most recent call last):
    ...
    kbert.errors.SettingError: --beam_pipeline_options: argument --direct_num_workers: ...: 'two'
    """
    try:
        flags = shlex.split(text or "")
    except ValueError as e:
        raise SettingError(f"{FLAG} {text!r}: {e}") from None
    options = PipelineOptions(flags)
    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):
            given = options.get_all_options(retain_unknown_options=True)
    except SystemExit:
        reason = usage.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
        raise SettingError(f"{FLAG}: {reason}") from None
    unknown = sorted(set(given) - set(PipelineOptions([]).get_all_options()))
    if unknown:
        raise SettingError(
            f"{FLAG}: not a Beam pipeline option: {', '.join('--' + name for name in unknown)}"
        )
    return options


class BeamRunner:
    """Makes shards, once, with the Beam runner that `--beam_pipeline_options` names (Beam's
    default, the DirectRunner, when it names none).

    Args:
        pipeline_options: Beam's flags as one string (shell quoting), or None.

    Examples:
    >>> BeamRunner("--runner=FnApiRunner --direct_num_workers=2").runner_name
    'FnApiRunner'
    >>> BeamRunner("--runner=NoSuchRunner")
    Traceback (most recent call last):
    ...
    kbert.errors.SettingError: --beam_pipeline_options: Unexpected pipeline runner: NoSuch...
    """

    def __init__(self, pipeline_options: str | None):
        options = parse_pipeline_options(pipeline_options)
        try:
            self.pipeline = beam.Pipeline(options=options)
        except ValueError as e:  # an unknown runner, or options the runner's validator rejects
            reasons = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
            raise SettingError(f"{FLAG}: {'; '.join(reasons) or e}") from None
        except ImportError as e:  # e.g. DataflowRunner without apache-beam[gcp]
            raise SettingError(f"{FLAG}: {e}") from None
        self.runner_name = type(self.pipeline.runner).__name__

    def check_paths(self, corpus: corpora.TextFiles, prefix: str) -> None:
        """Dataflow's workers are other machines: refuse local input or output paths up front."""
        if "dataflow" not in self.runner_name.lower():
            return
        paths = [(path, "--input_file") for path in corpus.files] + [(prefix, "--output_file")]
        for path, flag in paths:
            if "://" not in path:
                raise SettingError(
                    f"{flag} {path}: {self.runner_name} workers cannot reach "
                    "local files; use gs:// paths (a TFDS or built-in corpus is first spooled to "
                    "a local file: write it out as text files on gs:// instead)"
                )

    def make_shards(self, job: ShardJob, todo: list[int]) -> dict[str, int]:
        """Run the pipeline that makes shards `todo`; returns the Beam counters' totals."""
        _ = (
            self.pipeline
            | "shard indices" >> beam.Create(todo)
            # Without it a runner may fuse Create with the ParDo and make every shard on one worker.
            | "spread over workers" >> beam.Reshuffle()
            | "make shards" >> beam.ParDo(_MakeShard(job))
        )
        try:
            result = self.pipeline.run()
            state = result.wait_until_finish()
        # Runners report a failed job with exceptions of their own types.
        except Exception as e:
            lines = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
            raise IncompleteRunError(
                f"the Beam pipeline failed ({lines[-1].strip()}); complete shards are kept, rerun "
                "the same command to finish the set"
            ) from e  # --debug shows the runner's own error
        if state not in (None, PipelineState.DONE):
            raise IncompleteRunError(
                f"the Beam pipeline ended {state}; complete shards are kept, rerun the same "
                "command to finish the set"
            )
        return _counters(result)


class _MakeShard(beam.DoFn):
    """One element = one shard index: make the shard, count what it holds."""

    def __init__(self, job: ShardJob):
        self.job = job
        names = [field.name for field in dataclasses.fields(ShardStats)]
        self.counters = {name: Metrics.counter(NAMESPACE, name) for name in names}
        self.shards = Metrics.counter(NAMESPACE, "shards")

    def setup(self):
        # A worker runs one shard per core already: the Rust tokenizer's thread pool would contend.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"

    def process(self, index: int):
        stats = self.job.completed(index) or self.job.make_shard(index)
        for name, value in dataclasses.asdict(stats).items():
            self.counters[name].inc(value)
        self.shards.inc()
        return []


def _counters(result) -> dict[str, int]:
    """Totals of the namespace's counters: committed values (attempted where a runner has none)."""
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + value
    return totals
