"""Real `snakemake` processes on real files with the tiny ESM-2, CPU mode, two device slots:
what a user gets from a run, a second run, and after deleting or adding files or changing
settings."""

from __future__ import annotations

import csv
import json
import re
import shutil

import pytest
import torch
from helpers import NAMES, jobs_to_run, make_workdir, mtimes, record, snakemake, summary_checked
from reference import reference_embeddings

from seqembed.compute.backends.esm import PROTEIN_ALPHABET
from seqembed.fasta import read_fasta
from seqembed.precision import choose_precision
from seqembed.report.outcomes import read_records
from seqembed.report.summary import summarize

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model):
    """One complete run; tests that change things work on a copy of it."""
    workdir = make_workdir(tmp_path_factory.mktemp("run"), tiny_model)
    # the profile's live view, output not a terminal: a status block every second; batches
    # made slower so that the view sees jobs halfway through their files
    result = snakemake(
        workdir, "--logger-seqembed-interval", "1", faults={"seconds_per_batch": 0.4}
    )
    return workdir, result


@pytest.fixture
def run_copy(finished_run, tmp_path):
    workdir, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, symlinks=True)
    return copy


def test_run_writes_correct_embeddings_plan_and_summary(finished_run, tiny_model):
    workdir, result = finished_run
    assert result.returncode == 0, result.stderr
    out = workdir / "results"

    for name in NAMES:
        records = read_fasta(workdir / "fasta" / f"{name}.fasta", PROTEIN_ALPHABET)
        embedded = torch.load(out / "embeddings" / f"{name}.pt")
        assert embedded["ids"] == records.ids
        expected = reference_embeddings(tiny_model, records.sequences, [3], 1022)[3]
        got = embedded["mean_representations"][3]
        assert (got - expected).abs().max().item() <= 1e-5

    with open(out / "plan.tsv", newline="") as handle:
        plan = {row["name"]: row for row in csv.DictReader(handle, delimiter="\t")}
    assert sorted(plan) == NAMES
    assert {row["device"] for row in plan.values()} == {"cpu:0", "cpu:1"}
    for name in NAMES:
        records = read_fasta(workdir / "fasta" / f"{name}.fasta", PROTEIN_ALPHABET)
        lengths = [len(sequence) for sequence in records.sequences]
        assert int(plan[name]["sequences"]) == len(lengths)
        assert int(plan[name]["residues"]) == sum(lengths)
        assert int(plan[name]["longest"]) == max(lengths)

    records = read_records(out / "records", NAMES)
    assert all(record["status"] == "done" for record in records.values())
    assert {record["device"] for record in records.values()} <= {"cpu:0", "cpu:1"}
    summary = summary_checked(workdir)
    planned = json.loads((out / "plan.json").read_text())["planned_load"]
    since = json.loads((out / ".seqembed" / "run" / "started.json").read_text())["started"]
    recomputed = summarize(records, planned, None, since)
    assert summary == json.loads(json.dumps(recomputed))
    assert summary["files"] == {
        "total": 4,
        "done": 4,
        "failed": 0,
        "missing": 0,
        "computed_this_run": 4,
        "skipped": 0,
    }
    # the figures, recomputed here from the per-file records
    done = list(records.values())
    assert summary["sequences"] == sum(r["sequences"] for r in done)
    assert summary["residues"] == sum(r["residues"] for r in done)
    wall = max(r["finished"] for r in done) - min(r["started"] for r in done)
    assert summary["wall_seconds"] == pytest.approx(wall)
    assert summary["residues_per_s"] == pytest.approx(summary["residues"] / wall)
    load = sum(r["model_load_seconds"] for r in done)
    busy = sum(r["finished"] - r["claimed"] for r in done)
    assert summary["model_load_share"] == pytest.approx(load / busy)
    padding = sum(r["real_tokens"] for r in done) / sum(r["computed_tokens"] for r in done)
    assert summary["padding_efficiency"] == pytest.approx(padding)
    for device, figures in summary["devices"].items():
        on_device = [r for r in done if r["device"] == device]
        assert figures["files"] == len(on_device)
        assert figures["residues"] == sum(r["residues"] for r in on_device)
        assert figures["busy_seconds"] == pytest.approx(
            sum(r["finished"] - r["claimed"] for r in on_device)
        )
        assert figures["planned_residues"] == planned[device]
    assert summary["failures_by_type"] == {} and summary["failures"] == []
    assert summary["truncated_sequences"] == 2  # the two long sequences in delta
    assert (out / "failed_files.txt").read_text() == ""
    assert "4/4 files done" in result.stdout + result.stderr
    # plain snakemake picks up the workflow profile (keep-going and friends)
    assert "Using workflow specific profile" in result.stdout + result.stderr
    # the largest file starts first: its job is the first embed job in Snakemake's log file
    # (the terminal shows the view instead of Snakemake's per-job messages)
    (log,) = (out.parent / ".snakemake" / "log").glob("*.snakemake.log")
    first_embed = re.search(r"rule embed:\n(?:.*\n){0,6}?\s+wildcards: name=(\w+)", log.read_text())
    assert first_embed and first_embed.group(1) == "alpha"
    assert "rule embed:" not in result.stderr


def test_the_live_view_prints_device_lines_and_the_final_table(finished_run):
    _, result = finished_run
    blocks = re.findall(r"^\[\d\d:\d\d:\d\d\] seqembed  files .*(?:\n  .*)*", result.stderr, re.M)
    assert blocks, result.stderr
    busy = [
        line for block in blocks for line in block.splitlines()[1:] if not line.endswith("idle")
    ]
    assert any(
        re.match(r"  cpu:[01] +(alpha|beta|delta|gamma) +[█░]{20} +[\d,]+ / [\d,]+ +\d+%$", line)
        for line in busy
    ), blocks
    # the last block: every file done, every device idle
    assert blocks[-1].splitlines() == [
        blocks[-1].splitlines()[0].split("] ")[0] + "] seqembed  files 4 / 4 done (100.0%) · "
        "0 failed · 0 running",
        "  cpu:0        idle",
        "  cpu:1        idle",
    ]
    # the final table comes after the view, on stdout
    assert re.search(r"^total +4 ", result.stdout, re.M), result.stdout


def test_second_run_does_nothing(run_copy):
    before = mtimes(run_copy)
    assert jobs_to_run(run_copy) == {}
    result = snakemake(run_copy)
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr
    assert mtimes(run_copy) == before


def test_deleting_one_output_reruns_only_that_file(run_copy):
    (run_copy / "results" / "embeddings" / "beta.pt").unlink()
    before = mtimes(run_copy)
    assert jobs_to_run(run_copy)["embed"] == ["beta"]
    assert snakemake(run_copy).returncode == 0
    after = mtimes(run_copy)
    assert sorted(after) == NAMES
    assert {name for name in NAMES if after[name] != before.get(name)} == {"beta"}


def test_adding_an_input_file_runs_only_that_file(run_copy):
    shutil.copy(run_copy / "fasta" / "gamma.fasta", run_copy / "fasta" / "epsilon.fasta")
    before = mtimes(run_copy)
    jobs = jobs_to_run(run_copy)
    assert jobs["embed"] == ["epsilon"]
    assert "plan" in jobs and "summary" in jobs
    result = snakemake(run_copy)
    assert result.returncode == 0, result.stderr
    after = mtimes(run_copy)
    assert {name for name in after if after[name] != before.get(name)} == {"epsilon"}
    summary = json.loads((run_copy / "results" / "summary.json").read_text())
    assert summary["files"]["done"] == 5


@pytest.mark.parametrize(
    "setting",
    # precision fp32 is the tests' own setting (helpers.make_workdir)
    ["toks_per_batch=333", "verbosity=verbose", "gpus=[0,1]", "cpu_slots=1", "precision=fp32"],
)
def test_settings_that_cannot_change_numbers_rerun_nothing(run_copy, setting):
    assert "embed" not in jobs_to_run(run_copy, "--config", setting)


@pytest.mark.parametrize(
    "setting",
    [
        "truncation=100",
        "layers=[1]",
        "precision=bf16",
        "output_layout=virnucpro",
        "include=[mean,bos]",
        "output_format=h5",
        "pooling=all_tokens",
    ],
)
def test_settings_that_change_numbers_rerun_every_file(run_copy, setting):
    assert jobs_to_run(run_copy, "--config", setting)["embed"] == NAMES


def test_precision_auto_is_what_this_cpu_computes_fast_and_the_summary_says_why(run_copy):
    """auto on the CPU: bf16 where it has AMX-BF16 or AVX512-BF16, else fp32 (the tests'
    machines have AMX; a CI machine without it takes the other branch). The resolved value is
    what makes outputs stale: the fp32 run is redone exactly when auto is not fp32, and an
    explicit setting equal to it reruns nothing after."""
    choice = choose_precision("auto", "cpu")
    redone = jobs_to_run(run_copy, "--config", "precision=auto").get("embed", [])
    assert redone == (NAMES if choice.precision != "fp32" else [])
    result = snakemake(run_copy, "--config", "precision=auto")
    assert result.returncode == 0, result.stderr
    dtype = {"bf16": "bfloat16", "fp32": "float32"}[choice.precision]
    summary = summary_checked(run_copy)
    if redone:
        assert summary["precision"] == {dtype: {"jobs": 4, "reason": choice.reason}}
        assert f"precision {dtype} ({choice.reason})" in result.stdout + result.stderr
        assert {record(run_copy, name)["precision"] for name in NAMES} == {dtype}
    explicit = f"precision={choice.precision}"
    assert "embed" not in jobs_to_run(run_copy, "--config", explicit)


def test_changing_the_model_reruns_every_file(run_copy, tmp_path):
    from seqembed.demo import write_tiny_esm2

    other = write_tiny_esm2(tmp_path / "other", layers=2, dim=32, heads=4, seed=5)
    assert jobs_to_run(run_copy, "--config", f"model={other}")["embed"] == NAMES


def test_bad_config_value_stops_with_one_line_naming_the_key(run_copy):
    shutil.rmtree(run_copy / "results")
    result = snakemake(run_copy, "--config", "device=gpu")
    assert result.returncode == 1
    last_line = (result.stdout + result.stderr).strip().splitlines()[-1]
    assert last_line == "seqembed: config key 'device': 'gpu' is not one of ['auto', 'cpu', 'cuda']"
    assert not (run_copy / "results").exists()


def test_timeline_picture_is_written_and_in_snakemakes_html_report(finished_run, run_copy):
    workdir, _ = finished_run
    assert (workdir / "results" / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    result = snakemake(run_copy, "--report", "report.html")
    assert result.returncode == 0, result.stderr
    html = (run_copy / "report.html").read_text()
    assert "timeline.png" in html and "Where the time went" in html
