"""The workflow on a real SLURM: a single-node cluster (slurmctld, slurmd, munge from
Debian's packages) started on this machine by tests/slurm/cluster.sh, with four fake GPUs
that SLURM grants like real ones (CUDA_VISIBLE_DEVICES per job). Every embed job goes
through sbatch via snakemake-executor-plugin-slurm and the project's profile, edited the way
the README tells a user to. The one mock: a job that claimed its granted GPU computes on the
CPU (SEQEMBED_TEST_FAULTS gpu_computes_on_cpu), as this machine has no GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO
from helpers import (
    NAMES,
    assert_embeddings_correct,
    environment,
    failed_lines,
    make_workdir,
    mtimes,
    record,
)

pytestmark = pytest.mark.workflow

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


@pytest.fixture(scope="module")
def slurm_conf():
    if os.geteuid() != 0:
        pytest.skip("starting a SLURM cluster needs root (daemons, munge key, apt)")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("no SLURM here and no apt-get to install it (Debian's slurmctld, slurmd)")
    # not under pytest's tmp folder: the munge daemon runs as user munge and must reach it
    state = Path(tempfile.mkdtemp(prefix="seqembed-slurm-"))
    # 8 CPUs advertised on a 2-core machine: the profile asks 4 per GPU job
    env = {**os.environ, "SLURM_HELPER_CPUS": "8", "SLURM_HELPER_GPUS": "4"}
    started = subprocess.run(
        ["bash", str(CLUSTER), "start", str(state)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    try:
        assert started.returncode == 0, started.stderr
        yield started.stdout.strip().removeprefix("export SLURM_CONF=")
    finally:
        stopped = subprocess.run(
            ["bash", str(CLUSTER), "stop", str(state)], capture_output=True, text=True, timeout=120
        )
        assert stopped.returncode == 0, stopped.stderr
        shutil.rmtree(state, ignore_errors=True)


def user_profile(workdir: Path) -> Path:
    """profiles/slurm with the edits the README asks for: the partition, and memory to fit
    this test node (21 GB)."""
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    edited = text.replace("slurm_partition: gpu ", "slurm_partition: debug ").replace(
        "mem_mb: 32000 * attempt", "mem_mb: 2000 * attempt"
    )
    assert edited.count("debug") == 1 and "2000 * attempt" in edited
    (workdir / "profile").mkdir()
    (workdir / "profile" / "config.yaml").write_text(edited)
    return workdir / "profile"


def run_on_slurm(
    workdir: Path, slurm_conf: str, *args: str, faults: dict | None = None
) -> subprocess.CompletedProcess:
    env = environment({"gpu_computes_on_cpu": True, **(faults or {})})
    env["SLURM_CONF"] = slurm_conf
    command = [
        # SIGTERM would only make Snakemake wait for its running jobs: kill
        *("timeout", "-s", "KILL", "420"),
        *(SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--profile", "profile"),
        *("--configfile", "config.yaml"),
        # this cluster has no accounting database (sacct), and its jobs are short
        *("--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1"),
        *args,
    ]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env)


def test_packed_submissions_a_bad_file_fails_alone_and_a_rerun_redoes_only_it(
    tmp_path, tiny_model, slurm_conf
):
    """One run with submissions packed two files each (one SLURM job, one worker, one GPU),
    a bad file among them; then the fix and the command a user types again, unpacked: only
    the failed file is redone, in a SLURM job of its own. (One test, not two: each run on
    this cluster costs the executor plugin's status checks, 1 s and then 10 s more each
    time no job has finished.)"""
    workdir = make_workdir(tmp_path / "run", tiny_model, device="cuda")
    user_profile(workdir)
    broken = workdir / "fasta" / "broken.fasta"
    broken.write_text(">a\nMKV\n>b\nMK7V\n")
    result = run_on_slurm(
        workdir, slurm_conf, "--groups", "embed=pack", "--group-components", "pack=2"
    )
    # the group that holds the bad file fails (Snakemake then removes the outputs of all its
    # files and runs it again, up to three times): only the bad file is a failure
    assert result.returncode == 2, result.stderr[-3000:]
    # the job's own error line went to SLURM's log; the view prints it from the progress
    # files, and leaves out the plugin's line per submitted job
    assert "seqembed: InputError: fasta/broken.fasta: line 4" in result.stderr
    assert "has been submitted with SLURM jobid" not in result.stderr
    assert failed_lines(workdir) == [
        "fasta/broken.fasta|InputError|fasta/broken.fasta: line 4: record 'b' has characters "
        "outside the alphabet: '7'"
    ]
    first_try = record(workdir, "broken")["slurm_job_id"]
    assert first_try
    assert_embeddings_correct(workdir, tiny_model, NAMES)
    submissions: dict[str, list[dict]] = {}
    for name in NAMES:
        done = record(workdir, name)
        assert done["status"] == "done"
        # on a GPU SLURM granted that job and no other
        assert done["device"] == f"cuda:{done['slurm_gpus']}", done
        submissions.setdefault(done["slurm_job_id"], []).append(done)
    assert sorted(len(files) for files in submissions.values()) in ([1, 1, 2], [2, 2])
    for job_id, files in submissions.items():
        # one model load per submission: its files share one worker
        assert len({f["worker_pid"] for f in files}) == 1
        assert sorted(f["model_was_loaded"] for f in files) == [False, True][: len(files)]
        shown = subprocess.run(
            ["scontrol", "show", "job", job_id],
            capture_output=True,
            text=True,
            env={**os.environ, "SLURM_CONF": slurm_conf},
        ).stdout
        # the files one after the other, on one GPU; the time limit covers them
        assert "TresPerJob=gres:gpu:1\n" in shown, shown

    # the fix, and the same command again, as the README's: only the failed file is redone
    before = mtimes(workdir)
    broken.write_text(">a\nMKV\n>b\nMKSV\n")
    rerun = run_on_slurm(workdir, slurm_conf)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = mtimes(workdir)
    assert {name for name in after if after[name] != before.get(name)} == {"broken"}
    assert failed_lines(workdir) == []
    redone = record(workdir, "broken")
    assert redone["slurm_job_id"] not in {first_try, *submissions}
    assert redone["device"] == f"cuda:{redone['slurm_gpus']}"


def test_an_abort_stops_the_submitting_snakemake(tmp_path, tiny_model, slurm_conf):
    # every file fails at run time (a broken GPU in effect); three in a row abort the run,
    # on a node. The submitting Snakemake, on another host in a real cluster, learns it from
    # the shared run state and submits nothing more: not the other files, not the retries
    workdir = make_workdir(tmp_path / "run", tiny_model, device="cuda")
    for index in range(3):
        shutil.copy(workdir / "fasta" / "gamma.fasta", workdir / "fasta" / f"late{index}.fasta")
    user_profile(workdir)
    result = run_on_slurm(workdir, slurm_conf, "--jobs", "3", faults={"oom_above_tokens": 10})
    assert result.returncode == 1, result.stderr[-3000:]
    lines = failed_lines(workdir)
    failed = sorted(line.split("|")[0] for line in lines if "|OOM|" in line)
    assert len(failed) == 3, lines
    aborted = [line.split("|")[0] for line in lines if "|Aborted|" in line]
    assert len(aborted) == 4
    assert "seqembed: run aborted after 3 runtime failures in a row" in result.stdout
    # never submitted: no SLURM job ever ran for them (one may have been on its way as the
    # abort came). Before, every remaining file went through sbatch, up to three times
    records = workdir / "results" / "records"
    ran = [path for path in aborted if (records / f"{Path(path).stem}.json").exists()]
    assert len(ran) <= 1, ran
