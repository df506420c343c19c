"""Inputs and outputs as the field has them, in real `snakemake` runs: compressed FASTA (gzip
and bgzip-style multi-member), every kind fair-esm's extraction writes (mean, per_tok, bos) in
both formats, float16 storage, and the refusals that keep a night's run from dying late."""

from __future__ import annotations

import gzip
import os
import shutil
import signal

import h5py
import numpy as np
import pytest
import torch
import yaml
from helpers import (
    failed_lines,
    jobs_to_run,
    progress_of,
    record,
    snakemake,
    start_run,
    summary_checked,
    wait_for,
)
from reference import reference_outputs

from seqembed.compute.backends.esm import PROTEIN_ALPHABET
from seqembed.fasta import read_fasta

pytestmark = pytest.mark.workflow

INPUTS = {
    "alpha": "alpha.fasta",
    "beta": "beta.faa.gz",
    "delta": "delta.fasta",
    "gamma": "gamma.fa.gz",
}


@pytest.fixture
def mixed(workdir):
    """beta compressed by gzip in one member, gamma as bgzip writes it: many members, cut
    anywhere (here mid-line), each compressed on its own."""
    folder = workdir / "fasta"
    beta = (folder / "beta.fasta").read_bytes()
    (folder / "beta.faa.gz").write_bytes(gzip.compress(beta))
    gamma = (folder / "gamma.fasta").read_bytes()
    blocks = [gamma[i : i + 500] for i in range(0, len(gamma), 500)]
    (folder / "gamma.fa.gz").write_bytes(b"".join(gzip.compress(block) for block in blocks))
    (folder / "beta.fasta").unlink()
    (folder / "gamma.fasta").unlink()
    return workdir


def configure(workdir, **settings) -> None:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **settings}))


def expected_of(workdir, tiny_model, name: str) -> tuple[list[str], dict]:
    records = read_fasta(workdir / "fasta" / INPUTS[name], PROTEIN_ALPHABET)
    return records.ids, reference_outputs(tiny_model, records.sequences, [2, 3], 1022)


def close(stored, expected, tolerance=1e-5) -> bool:
    return (torch.as_tensor(np.asarray(stored)).float() - expected).abs().max().item() <= tolerance


def test_compressed_inputs_and_every_kind_in_both_formats(mixed, tiny_model):
    configure(mixed, include=["mean", "per_tok", "bos"], layers=[2, 3])
    result = snakemake(mixed)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (mixed / "results" / "embeddings").iterdir()) == [
        "alpha.pt",
        "beta.pt",
        "delta.pt",
        "gamma.pt",
    ]
    for name in INPUTS:
        ids, expected = expected_of(mixed, tiny_model, name)
        output = torch.load(mixed / "results" / "embeddings" / f"{name}.pt")
        assert output["ids"] == ids
        for layer in (2, 3):
            assert close(output["mean_representations"][layer], expected["mean"][layer])
            assert close(output["bos_representations"][layer], expected["bos"][layer])
            rows = output["representations"][layer]
            assert len(rows) == len(ids)
            for got, want in zip(rows, expected["per_tok"][layer], strict=True):
                assert got.shape == want.shape and close(got, want), name
    # delta's long sequences are cut at the truncation, per residue too
    assert max(len(rows) for rows in output["representations"][3]) <= 1022

    configure(mixed, output_format="h5")
    result = snakemake(mixed)
    assert result.returncode == 0, result.stderr
    for name in INPUTS:
        ids, expected = expected_of(mixed, tiny_model, name)
        with h5py.File(mixed / "results" / "embeddings" / f"{name}.h5", "r") as file:
            assert list(file["ids"].asstr()[:]) == ids
            assert file.attrs["source"] == f"fasta/{INPUTS[name]}"
            offsets = file["offsets"][:]
            for layer in (2, 3):
                assert close(file[f"mean/{layer}"][:], expected["mean"][layer])
                assert close(file[f"bos/{layer}"][:], expected["bos"][layer])
                for index, want in enumerate(expected["per_tok"][layer]):
                    got = file[f"per_tok/{layer}"][offsets[index] : offsets[index + 1]]
                    assert close(got, want), (name, index)
    summary = summary_checked(mixed)
    assert summary["files"]["done"] == 4

    # float16 storage halves the per-residue data: every file is redone
    sizes = {p.stem: p.stat().st_size for p in (mixed / "results" / "embeddings").glob("*.h5")}
    assert jobs_to_run(mixed, "--config", "store_float16=[per_tok]")["embed"] == sorted(INPUTS)
    result = snakemake(mixed, "--config", "store_float16=[per_tok]")
    assert result.returncode == 0, result.stderr
    for path in (mixed / "results" / "embeddings").glob("*.h5"):
        with h5py.File(path, "r") as file:
            assert file["per_tok/3"].dtype == np.float16
            assert file["mean/3"].dtype == np.float32
        assert path.stat().st_size < 0.65 * sizes[path.stem]


def test_a_corrupt_gzip_fails_alone(mixed, tiny_model):
    data = (mixed / "fasta" / "beta.faa.gz").read_bytes()
    (mixed / "fasta" / "broken.faa.gz").write_bytes(data[: len(data) // 2])
    result = snakemake(mixed)
    assert result.returncode == 2, result.stderr
    assert failed_lines(mixed) == [
        "fasta/broken.faa.gz|InputError|fasta/broken.faa.gz: corrupt gzip: truncated: the "
        "compressed data ends early"
    ]
    assert len(list((mixed / "results" / "embeddings").glob("*.pt"))) == 4
    # the plan counted what it could read of it
    assert "broken" in (mixed / "results" / "plan.tsv").read_text()


def test_per_residue_pt_over_its_limit_is_refused_at_once(mixed, tiny_model):
    """The 4 GiB limit, lowered for the test to a size alpha exceeds and gamma does not."""
    configure(mixed, include=["per_tok"])
    result = snakemake(mixed, faults={"files": {"alpha": {"pt_limit_bytes": 100_000}}})
    assert result.returncode == 2, result.stderr
    (line,) = failed_lines(mixed)
    assert line == (
        "fasta/alpha.fasta|OutputTooLarge|fasta/alpha.fasta: per-residue output of 0.8 MiB is "
        "over the 0.1 MiB a .pt file may hold (it is built in memory); set output_format: h5, "
        "which writes it as it is computed"
    )
    record = yaml.safe_load((mixed / "results" / "records" / "alpha.json").read_text())
    # deterministic: the retries repeat the verdict without a device or a model
    assert [attempt["device"] for attempt in record["previous_attempts"]] == ["cpu:0", None]
    done = sorted(p.stem for p in (mixed / "results" / "embeddings").glob("*.pt"))
    assert done == ["beta", "delta", "gamma"]


def test_virnucpro_with_per_residue_output_is_a_one_line_config_error(mixed):
    shutil.rmtree(mixed / "results", ignore_errors=True)
    result = snakemake(mixed, "--config", "output_layout=virnucpro", "include=[mean,per_tok]")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "seqembed: config key 'include': output_layout virnucpro holds mean embeddings only; "
        "use output_layout default for per_tok or bos"
    )


def test_a_worker_killed_mid_h5_is_retried_and_leaves_nothing_half_written(mixed, tiny_model):
    """The worker holds alpha's HDF5 file open, half its rows written, when it is killed."""
    configure(mixed, include=["mean", "per_tok"], output_format="h5")
    run = start_run(mixed, {"files": {"alpha": {"seconds_per_batch": 1.0}}})
    worker = wait_for(lambda: progress_of(mixed, "alpha").get("worker_pid"))
    wait_for(lambda: progress_of(mixed, "alpha").get("done"))
    assert len(list((mixed / "results" / "embeddings").glob(".alpha.h5.*.tmp"))) == 1
    os.kill(worker, signal.SIGKILL)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output
    assert record(mixed, "alpha")["attempt"] == 2
    assert list((mixed / "results" / "embeddings").glob(".*")) == []
    ids, expected = expected_of(mixed, tiny_model, "alpha")
    with h5py.File(mixed / "results" / "embeddings" / "alpha.h5", "r") as file:
        offsets = file["offsets"][:]
        for index, want in enumerate(expected["per_tok"][3]):
            assert close(file["per_tok/3"][offsets[index] : offsets[index + 1]], want)
        assert close(file["mean/3"][:], expected["mean"][3])
