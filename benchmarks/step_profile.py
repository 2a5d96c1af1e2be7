"""Where a training step's time goes: TensorFlow profiler traces summarised by op group.

`trace_training_steps` records `steps` steps of `model.fit` with `tf.profiler.experimental`;
`summarise_trace` reads the trace's `.xplane.pb` (the protobuf TensorFlow ships, no plugin needed)
and adds up the exclusive time of every TensorFlow op (XLA off) or XLA thunk (XLA on, each mapped
back to its TensorFlow op through the HLO module stored in the trace), grouped by what it computes.
Times are per step and summed over threads, so with 2 inter-op threads they can exceed the step's
wall time; the proportions are what to read.
"""

from __future__ import annotations

import collections
import re
import time
from contextlib import contextmanager
from typing import Any

GROUPS = (
    "matmul (encoder + heads)",
    "matmul (MLM vocab projection, tied)",
    "attention softmax",
    "layer norm",
    "GELU",
    "dropout RNG",
    "dropout mask & scale",
    "embedding gradient",
    "MLM/NSP softmax + cross-entropy",
    "metrics",
    "optimizer update",
    "weight decay",
    "clipping",
    "casts",
    "bias add & bias gradient",
    "transposes & copies",
    "gradient sums (AddN)",
    "input (IteratorGetNext)",
    "other",
)
CLIPPING_SCOPE, WEIGHT_DECAY_SCOPE, METRICS_SCOPE = "clipping", "weight_decay", "metrics"
_MATMUL_OPCODES = ("dot", "convolution")
# Ops run inside the train function's call (and, with steps_per_execution > 1, inside its while
# loop) carry the call's scopes before their own.
_CALL_PREFIX = r"^(.*/)?StatefulPartitionedCall/"


def classify(
    op_name: str, op_type: str, optimizer_scope: str = "adam_weight_decay", opcode: str = ""
) -> str:
    """The group of one op from its TensorFlow name scope and type (or XLA opcode)."""
    name = re.sub(_CALL_PREFIX, "", op_name)
    lower, kind = name.lower(), op_type.lower()
    if "matmul" in kind or kind in ("einsum", "_mkleinsum") or opcode in _MATMUL_OPCODES:
        if "vocab_projection" in lower or (
            "mlm_head" in lower and "intermediate_dense" not in lower
        ):
            return "matmul (MLM vocab projection, tied)"
        return "matmul (encoder + heads)"
    if "sparsesoftmaxcrossentropy" in lower.replace("_", ""):
        # Shared by the loss and the whole-set metric trackers when CSE merges them.
        return "MLM/NSP softmax + cross-entropy"
    if f"/{CLIPPING_SCOPE}/" in f"/{lower}":
        return "clipping"
    if f"/{WEIGHT_DECAY_SCOPE}/" in f"/{lower}":
        return "weight decay"
    if lower.startswith(f"{optimizer_scope}/"):
        return "optimizer update"
    if lower.startswith(f"{METRICS_SCOPE}/"):
        return "metrics"
    if kind == "cast":
        return "casts"
    if "dropout" in lower:
        if "random" in kind or "stateless_random" in lower or "stateless_dropout" not in lower:
            return "dropout RNG"
        return "dropout mask & scale"
    if "layer_norm" in lower or "layernorm" in lower:
        return "layer norm"
    if "gelu" in lower or kind in ("tanh", "tanhgrad", "erf"):
        return "GELU"
    if "softmax" in lower and "attention" in lower:
        return "attention softmax"
    if kind == "unsortedsegmentsum" or (
        lower.startswith("gradient_tape/") and "embedding" in lower
    ):
        return "embedding gradient"
    if lower.startswith("compile_loss/") or lower.startswith("gradient_tape/compile_loss/"):
        return "MLM/NSP softmax + cross-entropy"
    if (
        kind in ("biasadd", "biasaddgrad")
        or "/biasadd" in lower
        or re.search(r"mlm_head[^/]*/add(_\d+)?(/|$)", lower)
    ):
        return "bias add & bias gradient"
    if "transpose" in kind or opcode in ("transpose", "copy"):
        return "transposes & copies"
    if kind == "addn" or re.match(r"addn(_\d+)?(/|$)", lower):
        return "gradient sums (AddN)"
    if "iteratorgetnext" in kind:
        return "input (IteratorGetNext)"
    return "other"


@contextmanager
def named_phases(model: Any):
    """Put the optimizer's clipping and weight decay and the model's metrics in name scopes.

    Instrumentation for the profile only (name scopes change no computation): Keras runs these
    under the optimizer's scope or none, so their ops could not be told apart otherwise.
    """
    import tensorflow as tf

    optimizer = model.optimizer
    originals = {
        "clip": optimizer._clip_gradients,
        "decay": optimizer._apply_weight_decay,
        "metrics": model.compute_metrics,
    }

    def clip(grads):
        with tf.name_scope(CLIPPING_SCOPE):
            return originals["clip"](grads)

    def decay(variables):
        with tf.name_scope(WEIGHT_DECAY_SCOPE):
            return originals["decay"](variables)

    def metrics(*args, **kwargs):
        with tf.name_scope(METRICS_SCOPE):
            return originals["metrics"](*args, **kwargs)

    optimizer._clip_gradients, optimizer._apply_weight_decay = clip, decay
    object.__setattr__(model, "compute_metrics", metrics)
    try:
        yield model
    finally:
        optimizer._clip_gradients = originals["clip"]
        optimizer._apply_weight_decay = originals["decay"]
        object.__delattr__(model, "compute_metrics")


def trace_training_steps(model: Any, dataset: Any, steps: int, warmup: int, logdir: str) -> dict:
    """Fit `warmup` steps (compilation), then trace `steps` more (whole executions of the train
    function); returns the trace's path and the traced fit's wall time per step."""
    import glob

    import keras
    import tensorflow as tf

    model.fit(dataset, steps_per_epoch=warmup, epochs=1, verbose=0)
    marks = []
    clock = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: marks or marks.append(time.perf_counter()),
        on_train_batch_end=lambda batch, logs: marks.append(time.perf_counter()),
    )
    tf.profiler.experimental.start(logdir)
    try:
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[clock])
    finally:
        tf.profiler.experimental.stop()
    (path,) = sorted(glob.glob(f"{logdir}/plugins/profile/*/*.xplane.pb"))[-1:]
    return {"path": path, "wall_ms_per_step": (marks[-1] - marks[0]) / steps * 1e3}


def _hlo_instructions(space: Any) -> dict[tuple[str, str], tuple[str, str, str]]:
    """(HLO module, instruction name) -> (TF op name, TF op type, opcode), from the trace's HLO
    modules (instruction names repeat across modules: a step may run several XLA programs)."""
    from tensorflow.compiler.xla.service import hlo_pb2

    found = {}
    for plane in space.planes:
        if plane.name != "/host:metadata":
            continue
        for metadata in plane.event_metadata.values():
            for stat in metadata.stats:
                if not stat.bytes_value:
                    continue
                proto = hlo_pb2.HloProto()
                proto.ParseFromString(stat.bytes_value)
                computations = {c.id: c for c in proto.hlo_module.computations}
                for computation in computations.values():
                    own = {}
                    for instruction in computation.instructions:
                        metadata = instruction.metadata
                        if not metadata.op_name:
                            metadata = _called_metadata(instruction, computations) or metadata
                        own[instruction.id] = metadata
                    for instruction in computation.instructions:
                        metadata = own[instruction.id]
                        if not metadata.op_name:
                            metadata = _neighbour_metadata(instruction, computation, own)
                        found[proto.hlo_module.name, instruction.name] = (
                            metadata.op_name,
                            metadata.op_type,
                            instruction.opcode,
                        )
    return found


def _neighbour_metadata(instruction: Any, computation: Any, own: dict) -> Any:
    """The metadata of the nearest user (else operand) that has one: XLA's rewrites (e.g. a
    reduction split into reduce-window + reduce) leave the new instructions without any."""
    users = collections.defaultdict(list)
    for other in computation.instructions:
        for operand in other.operand_ids:
            users[operand].append(other.id)
    for neighbours in (lambda i: users[i], lambda i: by_id[i].operand_ids):
        by_id = {i.id: i for i in computation.instructions}
        frontier, seen = [instruction.id], {instruction.id}
        for _ in range(4):
            frontier = [n for i in frontier for n in neighbours(i) if n not in seen]
            seen.update(frontier)
            named = [own[n] for n in frontier if own[n].op_name]
            if named:
                return named[0]
    return instruction.metadata


def _called_metadata(instruction: Any, computations: dict) -> Any:
    """The TF op metadata most common in the computations an XLA instruction calls (a fusion's)."""
    counts = collections.Counter()
    for computation_id in instruction.called_computation_ids:
        for inner in computations[computation_id].instructions:
            if inner.metadata.op_name and inner.opcode not in ("parameter", "constant"):
                counts[inner.metadata.op_name, inner.metadata.op_type] += 1
                if inner.opcode in _MATMUL_OPCODES:
                    counts[inner.metadata.op_name, inner.metadata.op_type] += 1000
    if not counts:
        return None
    (op_name, op_type), _ = counts.most_common(1)[0]
    return collections.namedtuple("Metadata", "op_name op_type")(op_name, op_type)


def summarise_trace(path: str, steps: int, optimizer_scope: str = "adam_weight_decay") -> dict:
    """Per-step exclusive time of each op and group in a trace of `steps` training steps.

    Returns `groups` {group: ms per step}, `ops` [(name, group, ms per step)] (largest first),
    `kernel_ms` (their sum), `call_ms` (the train function's own duration per step, host side) and
    `xla` (whether thunks of compiled XLA code were found).
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    hlo = _hlo_instructions(space)
    (host,) = [p for p in space.planes if p.name == "/host:CPU"]
    stat_names = {k: v.name for k, v in host.stat_metadata.items()}
    op_ps = collections.Counter()
    op_group = {}
    calls_ps = []
    for line in host.lines:
        # Events on one thread nest; each op keeps only the time its children did not take, and
        # an XLA thunk with no TensorFlow op of its own (inside a called computation) takes its
        # enclosing thunk's group.
        stack: list[list] = []  # [end_ps, key, group] of the enclosing ops
        events = sorted(line.events, key=lambda e: (e.offset_ps, -e.duration_ps))
        for event in events:
            metadata = host.event_metadata[event.metadata_id]
            name = metadata.name
            if line.name == "python" and name == "multi_step_on_iterator":
                calls_ps.append(event.duration_ps)
                continue
            stats = {stat_names.get(s.metadata_id): s for s in event.stats}
            module = stats.get("hlo_module")
            if module is not None:
                module = stat_names[module.ref_value] if module.ref_value else module.str_value
            if "hlo_op" in stats and (module, name) in hlo:
                op_name, op_type, opcode = hlo[module, name]
                key = f"{module}/{name}"
            elif name.count(":") == 1 and line.name.startswith(("tf_Compute", "tf_data")):
                op_name, op_type = name.rsplit(":", 1)
                opcode, key = "", name
            else:
                continue
            start, end = event.offset_ps, event.offset_ps + event.duration_ps
            while stack and stack[-1][0] <= start:
                stack.pop()
            if op_name or op_type:
                group = classify(op_name, op_type, optimizer_scope, opcode)
            else:
                group = stack[-1][2] if stack else classify(name, "", optimizer_scope, opcode)
            op_group.setdefault(key, group)
            op_ps[key] += event.duration_ps
            if stack:
                op_ps[stack[-1][1]] -= event.duration_ps
            stack.append([end, key, group])
    groups = dict.fromkeys(GROUPS, 0.0)
    for key, ps in op_ps.items():
        groups[op_group[key]] += ps / 1e9 / steps
    ops = sorted(
        ((key, op_group[key], ps / 1e9 / steps) for key, ps in op_ps.items()),
        key=lambda row: -row[2],
    )
    return {
        "groups": groups,
        "ops": ops,
        "kernel_ms": sum(groups.values()),
        "call_ms": sum(calls_ps) / 1e9 / steps if calls_ps else float("nan"),
        "xla": bool(hlo),
    }


def format_profile(label: str, summary: dict, wall_ms: float, top: int = 15) -> str:
    """The group table and the top ops of one summarised trace, as text."""
    kernel = summary["kernel_ms"]
    lines = [
        f"== {label}: step {wall_ms:.0f} ms wall; train function {summary['call_ms']:.0f} ms; "
        f"ops {kernel:.0f} ms summed over threads",
        f"{'group':40s} {'ms/step':>8s} {'share':>7s}",
    ]
    for group, ms in sorted(summary["groups"].items(), key=lambda kv: -kv[1]):
        if ms >= 0.05:
            lines.append(f"{group:40s} {ms:8.1f} {ms / kernel:7.1%}")
    host = wall_ms - summary["call_ms"]
    lines.append(f"{'host overhead (Python/Keras between calls)':40s} {host:8.1f} {'':>7s}")
    lines.append(f"top {top} ops{' (XLA thunks)' if summary['xla'] else ''}:")
    for key, group, ms in summary["ops"][:top]:
        short = re.sub(_CALL_PREFIX, "", key)
        short = short if len(short) <= 90 else "…" + short[-89:]
        lines.append(f"  {ms:7.1f} ms  {group:32s} {short}")
    return "\n".join(lines)
