"""One large file on every device: real `snakemake` runs with two CPU slots and one gzip file
of 2,000 sequences in four shards. The faults (SEQEMBED_TEST_FAULTS) are those of the other
failure tests: a job killed mid-write, an out-of-memory error injected where CUDA raises it."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal

import pytest
import torch
import yaml
from helpers import (
    failed_lines,
    jobs_to_run,
    progress_of,
    snakemake,
    start_run,
    summary_checked,
    wait_for,
)
from reference import reference_embeddings

from seqembed.compute.backends import PROTEIN_ALPHABET
from seqembed.demo import write_fasta
from seqembed.devices import lane_of
from seqembed.fasta import read_fasta
from seqembed.report.outcomes import work_records
from seqembed.report.timeline import lanes

pytestmark = pytest.mark.workflow

LABELS = ["1-of-4", "2-of-4", "3-of-4", "4-of-4"]


def shard_record(workdir, label: str) -> dict:
    path = workdir / "results" / "records" / "shards" / "big" / f"{label}.json"
    return json.loads(path.read_text())


def paused_shard(workdir, label: str) -> dict:
    """The running record of the shard once its job sits between its temporary output and
    the rename (the injected pause)."""
    folder = workdir / "results" / ".seqembed" / "shards" / "big"

    def check():
        if not list(folder.glob(f".{label}.pt.*.tmp")):
            return None
        try:
            state = shard_record(workdir, label)
        except (OSError, ValueError):
            return None
        return state if state["status"] == "running" else None

    return wait_for(check)


@pytest.fixture
def big_file(tmp_path, tiny_model):
    """One gzip-compressed file: each shard job streams past the records before its own."""
    rng = random.Random(17)
    (tmp_path / "fasta").mkdir()
    plain = tmp_path / "big-plain.fasta"  # the reference's copy, outside the inputs
    write_fasta(plain, "big", 2000, rng, lengths=(20, 60))
    (tmp_path / "fasta" / "big.faa.gz").write_bytes(gzip.compress(plain.read_bytes()))
    settings = {
        "input_dir": "fasta",
        "model": str(tiny_model),
        "device": "cpu",
        "cpu_slots": 2,
        "lock_dir": str(tmp_path / "locks"),
        "precision": "fp32",  # compared with fair-esm in fp32
        # four shards of the one file
        "shard_size": plain.stat().st_size // 4 + 1,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(settings))
    return tmp_path


def test_a_large_file_in_shards_on_both_slots_survives_a_kill_and_a_failed_shard(
    big_file, tiny_model
):
    workdir = big_file
    # shard 2 is killed mid-write once; shard 3 runs out of memory on every sequence
    faults = {
        "pause_before_rename": {"name": "big.shard-2-of-4", "attempts": [1]},
        "files": {"big.shard-3-of-4": {"oom_above_tokens": 1}},
    }
    run = start_run(workdir, faults)
    paused = paused_shard(workdir, "2-of-4")

    # while shard 2 holds one slot, another shard computes on the other: both slots busy (one
    # of those that are computed once, so that the timeline keeps where it ran)
    def busy_beside() -> dict | None:
        for label in ("1-of-4", "4-of-4"):
            job = progress_of(workdir, f"big.shard-{label}")
            if job.get("device") not in (None, paused["device"]):
                if job.get("updated", 0) > paused["claimed"]:
                    return job
        return None

    beside = wait_for(busy_beside)
    os.kill(paused["pid"], signal.SIGKILL)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 1, output  # its one file failed

    # the killed shard was retried; nothing else was computed twice
    retried = shard_record(workdir, "2-of-4")
    assert retried["status"] == "done" and retried["attempt"] == 2
    assert [a["error_type"] for a in retried["previous_attempts"]] == ["Crash"]
    kept = {label: shard_record(workdir, label) for label in ("1-of-4", "2-of-4", "4-of-4")}
    assert [kept[label]["attempt"] for label in ("1-of-4", "4-of-4")] == [1, 1]
    # the failed shard fails its file, named
    (line,) = failed_lines(workdir)
    assert line.startswith("fasta/big.faa.gz|OOM|shard 3-of-4: sequence '"), line
    assert "does not fit in memory even alone" in line
    assert not (workdir / "results" / "embeddings" / "big.pt").exists()
    shards = workdir / "results" / ".seqembed" / "shards" / "big"
    assert sorted(path.name for path in shards.glob("*.pt")) == [
        "1-of-4.pt",
        "2-of-4.pt",
        "4-of-4.pt",
    ]
    # the timeline draws each shard's last attempt: the shard that computed beside the
    # paused one in its lane, the retried one in the lane it ran again in (either slot)
    by_shard = {"big": [shard_record(workdir, label) for label in LABELS]}
    drawn = lanes(work_records({"big": None}, by_shard))
    assert {lane_of(beside), lane_of(retried)} <= set(drawn) <= {"cpu:0", "cpu:1"}

    # the rerun redoes the failed shard and the gather, nothing else
    assert jobs_to_run(workdir) == {
        "all": [],
        "embed_shard": ["big/3-of-4"],
        "gather": ["big"],
        "summary": [],
    }
    rerun = snakemake(workdir)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert failed_lines(workdir) == []
    for label, record in kept.items():
        assert shard_record(workdir, label)["finished"] == record["finished"], label
    assert shard_record(workdir, "3-of-4")["status"] == "done"
    # one output, equal to fair-esm's in input order; the shards are gone
    records = read_fasta(workdir / "big-plain.fasta", PROTEIN_ALPHABET)
    embedded = torch.load(workdir / "results" / "embeddings" / "big.pt")
    assert embedded["ids"] == records.ids
    expected = reference_embeddings(tiny_model, records.sequences, [3], 1022)[3]
    assert (embedded["mean_representations"][3] - expected).abs().max().item() <= 1e-5
    assert list(shards.glob("*.pt")) == []
    summary = summary_checked(workdir)
    assert summary["files"]["done"] == 1 and summary["files"]["computed_this_run"] == 1
    assert sum(device["shards"] for device in summary["devices"].values()) == 1
    gathered = json.loads((workdir / "results" / "records" / "big.json").read_text())
    assert gathered["sequences"] == 2000 and gathered["shards"] == LABELS

    # another layer: every shard again; the first fails, and the last run's output, which the
    # gather would have replaced, does not pass for this run's
    changed = snakemake(
        workdir,
        "--config",
        "layers=[2]",
        faults={"files": {"big.shard-1-of-4": {"oom_above_tokens": 1}}},
    )
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert not (workdir / "results" / "embeddings" / "big.pt").exists()
    (line,) = failed_lines(workdir)
    assert line.startswith("fasta/big.faa.gz|OOM|shard 1-of-4: sequence '"), line
    assert "seqembed: OOM: fasta/big.faa.gz: shard 1-of-4: sequence '" in changed.stderr
