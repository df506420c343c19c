"""Running the workflow as a user does: a real `snakemake` process, in the user's own folder,
with the user's own config file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import REPO, make_fasta_set

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
NAMES = ["alpha", "beta", "delta", "gamma"]


def command(*args: str, slots: int = 2) -> list[str]:
    base = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--configfile", "config.yaml"]
    return base + ["--cores", "2", "--resources", f"gpu={slots}", *args]


def environment(faults: dict | None = None) -> dict[str, str]:
    environ = dict(os.environ)
    environ.pop("SEQEMBED_TEST_FAULTS", None)
    environ.pop("SEQEMBED_LIVE_VIEW", None)  # the runs' own view sets it for their jobs
    if faults:
        environ["SEQEMBED_TEST_FAULTS"] = json.dumps(faults)
    return environ


def snakemake(
    workdir: Path, *args: str, faults: dict | None = None, slots: int = 2
) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(*args, slots=slots),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
        env=environment(faults),
    )


def make_workdir(workdir: Path, model: Path | str, **config) -> Path:
    make_fasta_set(workdir / "fasta")
    # device claims in the test's own folder: a run on this machine outside the tests (and
    # the other tests) never shares a device with it
    settings = {
        "input_dir": "fasta",
        "model": str(model),
        "device": "cpu",
        "cpu_slots": 2,
        "lock_dir": str(workdir / "locks"),
        # what the tests compare with fair-esm's fp32 forward pass; `auto` is bf16 on a CPU
        # with bf16 matrix units (tests/workflow/test_precision.py)
        "precision": "fp32",
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump({**settings, **config}))
    return workdir


def jobs_to_run(workdir: Path, *args: str) -> dict[str, list[str]]:
    """rule -> wildcard names of the jobs a dry run would run (shards as name/label)."""
    result = snakemake(workdir, "--dry-run", *args)
    assert result.returncode == 0, result.stderr + result.stdout
    jobs: dict[str, list[str]] = {}
    rule = None
    for line in (result.stdout + result.stderr).splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            rule = match.group(1)
            jobs.setdefault(rule, [])
        elif (
            match := re.match(r"^wildcards: name=([^,\s]+)(, shard=(\S+))?$", line.strip())
        ) and rule:
            # a shard's job: name/label
            jobs[rule].append(match.group(1) + (f"/{match.group(3)}" if match.group(3) else ""))
    return {rule: sorted(names) for rule, names in jobs.items()}


def mtimes(workdir: Path) -> dict[str, int]:
    folder = workdir / "results" / "embeddings"
    return {path.stem: path.stat().st_mtime_ns for path in folder.glob("*.pt")}


def failed_lines(workdir: Path) -> list[str]:
    return (workdir / "results" / "failed_files.txt").read_text().splitlines()


def last_line(result: subprocess.CompletedProcess) -> str:
    return (result.stdout + result.stderr).strip().splitlines()[-1]


def assert_embeddings_correct(workdir: Path, model: Path, names: list[str]) -> None:
    """Each output equals fair-esm's unbatched forward pass on its input file."""
    import torch
    from reference import reference_embeddings

    from seqembed.compute.backends.esm import PROTEIN_ALPHABET
    from seqembed.fasta import read_fasta

    for name in names:
        records = read_fasta(workdir / "fasta" / f"{name}.fasta", PROTEIN_ALPHABET)
        embedded = torch.load(workdir / "results" / "embeddings" / f"{name}.pt")
        assert embedded["ids"] == records.ids, name
        (layer,) = embedded["mean_representations"]
        expected = reference_embeddings(model, records.sequences, [layer], 1022)[layer]
        difference = (embedded["mean_representations"][layer] - expected).abs().max().item()
        assert difference <= 1e-5, (name, difference)


def summary_checked(workdir: Path) -> dict:
    """summary.json, validated against its documented schema."""
    import jsonschema

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "summary.schema.yaml").read_text())
    summary = json.loads((workdir / "results" / "summary.json").read_text())
    jsonschema.validate(summary, schema)
    return summary


def record(workdir: Path, name: str) -> dict:
    return json.loads((workdir / "results" / "records" / f"{name}.json").read_text())


def start_run(workdir: Path, faults: dict | None = None, *args: str, slots: int = 2, **popen):
    """A run in the background, its output (both streams) in one pipe."""
    return subprocess.Popen(
        command(*args, slots=slots),
        cwd=workdir,
        env=environment(faults),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def wait_for(condition, timeout_s: float = 120.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def progress_of(workdir: Path, name: str) -> dict:
    """What the job of `name` last published for the live view ({} before it did)."""
    path = workdir / "results" / ".seqembed" / "run" / "progress" / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def events(workdir: Path) -> list[dict]:
    from seqembed import runstate

    return runstate.events(workdir / "results" / ".seqembed" / "run")


def paused_mid_write(workdir: Path, name: str, attempt: int = 1) -> dict:
    """The running record of `name` once its job, on `attempt`, sits between its temporary
    output and the rename (the injected pause)."""
    folder = workdir / "results" / "embeddings"

    def check():
        temporaries = list(folder.glob(f".{name}.pt.*.tmp")) if folder.exists() else []
        path = workdir / "results" / "records" / f"{name}.json"
        if not temporaries or not path.exists():
            return None
        try:
            state = json.loads(path.read_text())
        except ValueError:
            return None
        return state if (state["status"], state["attempt"]) == ("running", attempt) else None

    return wait_for(check)


def small_disk(folder: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` on `folder` (a real filesystem that fills up); None when done,
    else why it cannot be done here (not root, no mount)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        return f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}"
    return None


def fill(folder: Path) -> None:
    """Write into `folder` until its filesystem says it is full."""
    with open(folder / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"x" * 4096)
        except OSError:
            pass
