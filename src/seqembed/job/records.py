"""The per-file record (the embed rule's log, which Snakemake keeps after a failure), its copy
in the run state for the next attempt, and the run's receipts of finished embeddings.

Snakemake deletes a job's log before each attempt, so a retry learns what happened to the
attempt before it from the copy under `<state>/attempts/`.

A receipt is a hard link to a finished embedding under `<state>/finished/`. Snakemake
removes the outputs of every job of a group when one of them fails (a packed SLURM
submission: one bad file among twenty), and retries or gives up on the group as a whole. The
receipt keeps the good files' results: a retry restores them instead of computing them
again, and when the run ends the summary restores those Snakemake removed (same input, same
settings, this run's), so a packed group with one bad file fails only that file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from seqembed.output import output_error, write_json


def read_record(path: str | os.PathLike) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def last_attempt_path(state_dir: str, name: str) -> Path:
    return Path(state_dir) / "attempts" / f"{name}.json"


def receipt_path(state_dir: str, name: str) -> Path:
    return Path(state_dir) / "finished" / name


def write_record(record_path: str, state_dir: str, record: dict) -> None:
    """The record, and its copy for the next attempt; OutputError when either cannot be
    written (a full or read-only disk)."""
    for path in (record_path, last_attempt_path(state_dir, record["name"])):
        try:
            write_json(path, record)
        except OSError as error:
            raise output_error(path, error) from None


@functools.cache
def code_stamp() -> str:
    """What made an embedding besides its input and settings: this package's code, as its
    files' names, sizes and modification times (a few dozen stats, once per process). A
    receipt made by other code is not put back: after an upgrade Snakemake runs a bundle
    again for its script's newer time, and its files must then be computed anew."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def input_stamp(path: str) -> dict | None:
    """What makes an embedding stale besides the settings: the input file as it is now."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def keep_receipt(state_dir: str, name: str, output: str) -> None:
    receipt = receipt_path(state_dir, name)
    try:
        receipt.parent.mkdir(parents=True, exist_ok=True)
        receipt.unlink(missing_ok=True)
        os.link(output, receipt)
    except OSError:
        pass  # no hard links here (some FUSE mounts): a removed file is then computed again


def _run_wide(settings: dict | None) -> dict:
    """The settings without `long_sequences`, which each file's job derives from the others
    and the file itself (seqembed.run.long_sequences): within one run, where outputs are put
    back, it follows from them; the failure handler knows only the run's settings."""
    return {key: value for key, value in (settings or {}).items() if key != "long_sequences"}


def restore(record: dict | None, state_dir: str, settings: dict) -> bool:
    """Put back the embedding of a `done` record that Snakemake removed, when the input, the
    settings and the code are those it was made with; True when the file is there afterwards."""
    if not record or record.get("status") != "done":
        return False
    output = Path(record["output"])
    if output.exists():
        return True
    receipt = receipt_path(state_dir, record["name"])
    if (
        record.get("input") != input_stamp(record["file"])
        or record.get("code") != code_stamp()
        or _run_wide(record.get("settings")) != _run_wide(settings)
        or not receipt.is_file()
    ):
        return False
    try:
        os.link(receipt, output)
    except FileExistsError:
        return True
    except OSError:
        return False
    return True
