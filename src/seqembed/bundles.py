"""Bundles: many small input files computed in one job, the mirror of shards (`bundle_size`).

A job costs about 0.3 s besides its compute (an interpreter, Snakemake's script preamble,
the hand-off to the resident worker, and the scheduler's own work per job), which is most of
the time for files of a few sequences. A bundle pays it once for up to `bundle_size` files.
Everything else stays per file: one output and one record each, one hand-off each, and a
file's failure is that file's. Snakemake sees one job with many outputs and removes them all
when one file fails; each finished file's receipt (seqembed.job.records) puts it back, on
the retry, when the run ends, and on the next run, whose bundle job then computes only the
files that failed or went missing (`keep_finished`).

Bundles are formed when the workflow is read, from the files' sizes alone: largest first,
`bundle_size` at a time, so the scheduler's largest-first order holds between bundles. A
file added later can move others into another bundle: Snakemake then runs those bundles
again, and their files come back from their receipts, not from the model.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path

from seqembed.job.records import last_attempt_path, read_record, receipt_path

#: the rules' names: `embed_bundle_1` ... (Snakemake needs one rule per bundle: a rule's
#: outputs share its wildcards, and a bundle's files share no pattern)
PREFIX = "embed_bundle_"


def file_sizes(files: Mapping[str, str]) -> dict[str, int]:
    """name -> bytes on disk, read once while the workflow is read: the jobs' priorities,
    the plan's, and the bundles all order by it."""
    sizes = {}
    for name, path in files.items():
        try:
            sizes[name] = os.path.getsize(path)
        except OSError:
            sizes[name] = 0  # unreadable: its own job says why
    return sizes


def make_bundles(
    sizes: Mapping[str, int], bundle_size: int, sharded: Collection[str] = ()
) -> dict[str, list[str]]:
    """rule name -> the names of its files (`sizes`: name -> bytes, `file_sizes`); {} when
    bundling is off (0 or 1). Sharded files are never bundled."""
    if not bundle_size or bundle_size <= 1:
        return {}
    names = sorted((name for name in sizes if name not in sharded), key=lambda n: (-sizes[n], n))
    chunks = [names[start : start + bundle_size] for start in range(0, len(names), bundle_size)]
    return {f"{PREFIX}{index}": chunk for index, chunk in enumerate(chunks, 1)}


def keep_finished(layout, bundles: Mapping[str, list[str]]) -> int:
    """At the start of a run, after the run state was reset: for every bundled file whose
    embedding is there and whose record says it was done, a receipt and the record's copy
    for the job, which Snakemake will remove with the rest of the bundle's outputs before
    the job starts. The job puts it back instead of computing it when the input and settings
    are still the same (`restore_finished`); a file whose embedding the user deleted has no
    receipt and is computed again. Hard links: nothing is copied. Returns how many were kept."""
    kept = 0
    for names in bundles.values():
        for name in names:
            output = layout.embedding(name)
            record_path = layout.record(name)
            if not os.path.exists(output):
                continue
            record = read_record(record_path)
            if not record or record.get("status") != "done":
                continue
            try:
                for source, link in (
                    (output, receipt_path(layout.state, name)),
                    (record_path, last_attempt_path(layout.state, name)),
                ):
                    Path(link).parent.mkdir(parents=True, exist_ok=True)
                    Path(link).unlink(missing_ok=True)
                    os.link(source, link)
                kept += 1
            except OSError:
                continue  # no hard links here: the file is computed again
    return kept


def idle_warning(bundles: Mapping[str, list[str]], pool: list[str]) -> str | None:
    """The opening warning of a run with fewer bundles than devices."""
    if not bundles or len(bundles) >= len(pool):
        return None
    files = sum(map(len, bundles.values()))
    return (
        f"{files} input file(s) in {len(bundles)} bundle(s) for {len(pool)} devices: "
        f"{len(pool) - len(bundles)} device(s) will sit idle; set bundle_size to at most "
        f"{max(1, files // len(pool))}"
    )
