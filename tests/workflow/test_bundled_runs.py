"""Many small files in bundles (config bundle_size): real `snakemake` runs with two CPU slots,
a bad file in one bundle and a job killed in the other; a rerun redoes only what failed or
went missing, each file on its own."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import REPO
from helpers import (
    NAMES,
    assert_embeddings_correct,
    failed_lines,
    jobs_to_run,
    make_workdir,
    paused_mid_write,
    record,
    snakemake,
    start_run,
    summary_checked,
)

from seqembed.bundles import file_sizes, make_bundles
from seqembed.run.config import input_files, validate_config

pytestmark = pytest.mark.workflow


def bundles_of(workdir) -> dict[str, list[str]]:
    """The bundles the workflow forms, from its own config."""
    import yaml

    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["input_dir"] = str(workdir / "fasta")
    config = validate_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
    return make_bundles(file_sizes(input_files(config)), config["bundle_size"])


def test_bundles_fail_resume_and_rerun_per_file(tmp_path, tiny_model):
    workdir = make_workdir(tmp_path, tiny_model, bundle_size=3)
    # the smallest file: with gamma in the last bundle (5 files, largest first)
    (workdir / "fasta" / "broken.fasta").write_text(">a\nMKV\n>b\nMK7V\n")
    bundles = bundles_of(workdir)
    assert [len(names) for names in bundles.values()] == [3, 2]
    first, second = bundles.values()
    assert second[-1] == "broken"
    planned = jobs_to_run(workdir)
    assert planned.keys() >= set(bundles) and "embed" not in planned

    # the first bundle's job is killed while its second file is being written
    middle = first[1]
    run = start_run(workdir, {"pause_before_rename": {"name": middle, "attempts": [1]}})
    killed = paused_mid_write(workdir, middle, attempt=1)
    assert record(workdir, first[0])["status"] == "done"
    os.kill(killed["pid"], signal.SIGKILL)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 2, output

    # one line for the one bad file; every good file has its output
    assert failed_lines(workdir) == [
        "fasta/broken.fasta|InputError|fasta/broken.fasta: line 4: record 'b' has "
        "characters outside the alphabet: '7'"
    ]
    assert_embeddings_correct(workdir, tiny_model, NAMES)
    # the retry put back what the killed attempt had finished, and computed the rest
    assert record(workdir, first[0])["restored_from_attempt"] == 1
    again = record(workdir, middle)
    assert again["attempt"] == 2 and "restored_from_attempt" not in again
    assert [attempt["error_type"] for attempt in again["previous_attempts"]] == ["Crash"]
    assert again["device"] != killed["device"]
    assert record(workdir, first[2])["attempt"] == 2
    # the bad file's bundle-mate, removed by Snakemake with the failed job, is back
    assert (workdir / "results" / "embeddings" / f"{second[0]}.pt").exists()
    summary = summary_checked(workdir)
    assert (summary["files"]["done"], summary["files"]["failed"]) == (4, 1)
    # put back from an attempt of this run: computed by this run all the same
    assert summary["files"]["computed_this_run"] == 4

    # the fix, and a file the user deleted: only their bundles run, and in them only they
    # are computed; the bad file's mate comes back from its receipt
    (workdir / "fasta" / "broken.fasta").write_text(">a\nMKV\n>b\nMKVV\n")
    os.unlink(workdir / "results" / "embeddings" / f"{first[0]}.pt")
    assert set(jobs_to_run(workdir)) == set(bundles) | {"plan", "summary", "all"}
    rerun_started = time.time()
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr
    assert failed_lines(workdir) == []
    for name in (first[0], "broken"):
        assert record(workdir, name)["started"] >= rerun_started, name
        assert "restored_from_attempt" not in record(workdir, name), name
    for name in (first[1], first[2], second[0]):
        assert record(workdir, name)["started"] < rerun_started, name
        assert record(workdir, name)["restored"] >= rerun_started, name
    assert_embeddings_correct(workdir, tiny_model, NAMES + ["broken"])
    assert summary_checked(workdir)["files"]["computed_this_run"] == 2
    assert jobs_to_run(workdir) == {}
