"""The plan: what every input holds and which device it (or each of its shards) should run
on.

Jobs start largest-first (their Snakemake priority is the file size) and claim a free device
at run time, so the plan is advice, not a schedule: each job prefers its planned device, and
the summary compares planned with actual load. It is not an input of the embed jobs, because
re-planning (a file added) must not make finished embeddings stale.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping

from seqembed.devices import DeviceError, resolve_pool
from seqembed.fasta import fasta_stats
from seqembed.output import write_json, write_text
from seqembed.shards import job_names

COLUMNS = [
    "name",
    "file",
    "bytes",
    "sequences",
    "residues",
    "tokens",
    "longest",
    "shards",
    "device",
    "device_load",
]


def make_plan(
    files: Mapping[str, str],
    pool: list[str],
    count_tokens: Callable[[str], int] | None = None,
    shards: Mapping[str, int] | None = None,
    windows: tuple[int, int] | None = None,
) -> tuple[list[dict], dict]:
    """Per file statistics plus a balanced assignment by residues (work grows with residues;
    the file size in bytes would also count header text), or by tokens where a nucleotide
    model's tokenizer packs several letters into one (`count_tokens`, seqembed.run.tokens).
    A sharded file (`shards`: name -> count) is placed shard by shard, as the scheduler
    places its jobs, each shard carrying an equal share of its file's load; its row lists
    one device per shard. With `windows` (width, overlap: long sequences in windows) a long
    sequence counts its windows' residues, overlaps included."""
    # imported here: every embed job imports this module for planned_device() alone
    from seqembed.run.assign import assign

    shards = shards or {}
    cost = None
    if windows:
        from seqembed.compute.windows import computed_residues

        def cost(length: int) -> int:
            return computed_residues(length, *windows)

    stats = {name: fasta_stats(path, cost) for name, path in files.items()}
    tokens = {name: count_tokens(path) for name, path in files.items()} if count_tokens else {}
    loads = tokens or {name: s.computed for name, s in stats.items()}
    jobs = {name: job_names(name, shards.get(name, 1)) for name in files}
    # what the scheduler places: whole files, and shards with an equal share of their file's
    units = {
        job: loads[name] // len(names) + (index < loads[name] % len(names))
        for name, names in jobs.items()
        for index, job in enumerate(names)
    }
    assignment = assign(units, pool)

    def devices_of(name: str) -> list[str]:
        return [assignment.device_of[job] for job in jobs[name]]

    rows = [
        {
            "name": name,
            "file": files[name],
            "bytes": s.bytes,
            "sequences": s.sequences,
            "residues": s.residues,
            "tokens": tokens.get(name, ""),
            "longest": s.longest,
            "shards": shards.get(name, 1),
            "device": ",".join(devices_of(name)),
            "device_load": ",".join(str(assignment.loads[d]) for d in devices_of(name)),
        }
        for name, s in stats.items()
    ]
    overview = {
        "files": len(rows),
        "shards": sum(shards.values()),
        "devices": pool,
        "planned_load": assignment.loads,
        "makespan": assignment.makespan,
        "lower_bound": assignment.lower_bound,
        "lpt_makespan": assignment.lpt_makespan,
        "method": assignment.method,
        # what planned_load counts: residues, or a nucleotide model's tokens
        "load_unit": "tokens" if tokens else "residues",
    }
    return rows, overview


#: the plan's one lane when the jobs run on cluster nodes: each uses what its allocation was
#: granted, so no device can be planned from the submitting host
GRANTED = "granted"


def plan_windows(config: dict) -> tuple[int, int] | None:
    """(width, overlap) when long sequences are computed in windows, for make_plan."""
    if config["long_sequences"] != "windows":
        return None
    return config["truncation"], config["window_overlap"]


def plan_pool(config: dict) -> list[str]:
    """The devices to plan for: this host's pool, or (when this host has none of the
    configured kind, as a cluster's submitting host) one lane for the granted devices. The
    pre-flight has already stopped a local run whose devices are missing."""
    try:
        return resolve_pool(config["device"], config["gpus"], config["cpu_slots"])
    except DeviceError:
        return [GRANTED]


def write_plan(rows: list[dict], overview: dict, tsv: str, json_path: str) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(tsv, text.getvalue())
    write_json(json_path, overview)
