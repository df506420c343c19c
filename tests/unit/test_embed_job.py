"""One embed job, run through the same entry point the workflow uses, against fair-esm's
plain unbatched forward pass."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import REPO
from reference import reference_embeddings

from seqembed.compute.backends.esm import PROTEIN_ALPHABET
from seqembed.fasta import read_fasta
from seqembed.job.attempts import run_or_record_failure
from seqembed.job.embed import EmbedJob, run_embed_job
from seqembed.run.config import validate_config

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


def make_job(tmp_path, fasta, model, **settings) -> EmbedJob:
    """A job as the embed rule makes it, computing in its own process (worker: per_file): the
    resident worker has tests of its own (test_worker.py)."""
    defaults = {"device": "cpu", "worker": "per_file", "lock_dir": str(tmp_path / "locks")}
    defaults["precision"] = "fp32"  # compared with fair-esm in fp32
    config = validate_config({"model": str(model), **defaults, **settings}, SCHEMA)
    return EmbedJob(
        name=fasta.stem,
        fasta=str(fasta),
        output=str(tmp_path / "out" / f"{fasta.stem}.pt"),
        record=str(tmp_path / "records" / f"{fasta.stem}.json"),
        config=config,
        plan_path=str(tmp_path / "no-plan.tsv"),
        state_dir=str(tmp_path / "state"),
        logs_dir=str(tmp_path / "logs"),
        settings={"model": str(model), "truncation": config["truncation"]},
    )


@pytest.mark.parametrize(
    ("settings", "expected_layers"),
    [
        # default truncation (1022) with two longer sequences; a small budget forces many
        # batches of mixed lengths, so padding is exercised
        ({"toks_per_batch": 700}, [3]),
        # truncation far below most lengths, several layers incl. the embedding layer and -1
        ({"truncation": 50, "layers": [0, 2, -1], "toks_per_batch": 600}, [0, 2, 3]),
    ],
)
def test_embeddings_equal_unbatched_fair_esm(
    tmp_path, tiny_model, fasta_set, settings, expected_layers
):
    fasta = fasta_set["delta"] if "truncation" not in settings else fasta_set["alpha"]
    job = make_job(tmp_path, fasta, tiny_model, **settings)
    record = run_embed_job(job)

    result = torch.load(job.output)
    records = read_fasta(fasta, PROTEIN_ALPHABET)
    truncation = job.config["truncation"]
    expected = reference_embeddings(tiny_model, records.sequences, expected_layers, truncation)

    assert result["ids"] == records.ids  # input order, not length order
    assert result["model"] == tiny_model.stem
    assert result["truncation"] == truncation
    assert sorted(result["mean_representations"]) == expected_layers
    for layer in expected_layers:
        got = result["mean_representations"][layer]
        assert got.dtype == torch.float32
        assert got.shape == (len(records.ids), 32)
        assert (got - expected[layer]).abs().max().item() <= 1e-5

    lengths = [len(s) for s in records.sequences]
    assert record["batches"] > 1
    assert record["sequences"] == len(lengths)
    assert record["residues"] == sum(lengths)
    assert record["truncated_sequences"] == sum(n > truncation for n in lengths) > 0
    assert record["computed_tokens"] >= record["real_tokens"]
    assert json.loads(open(job.record).read()) == record


def test_virnucpro_layout_holds_the_same_numbers(tmp_path, tiny_model, fasta_set):
    fasta = fasta_set["beta"]
    default = make_job(tmp_path / "a", fasta, tiny_model, toks_per_batch=900)
    virnucpro = make_job(
        tmp_path / "b", fasta, tiny_model, output_layout="virnucpro", toks_per_batch=900
    )
    run_embed_job(default)
    run_embed_job(virnucpro)

    plain = torch.load(default.output)
    packed = torch.load(virnucpro.output)
    assert set(packed) == {"proteins", "data"}
    assert packed["proteins"] == plain["ids"]
    assert len(packed["data"]) == len(plain["ids"])
    assert torch.equal(torch.stack(packed["data"]), plain["mean_representations"][3])


def test_no_temporary_files_are_left_and_reruns_overwrite(tmp_path, tiny_model, fasta_set):
    job = make_job(tmp_path, fasta_set["gamma"], tiny_model)
    run_embed_job(job)
    first = torch.load(job.output)
    run_embed_job(job)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gamma.pt"]
    assert torch.equal(
        torch.load(job.output)["mean_representations"][3], first["mean_representations"][3]
    )


def test_bad_input_fails_with_one_line_and_a_failure_record(tmp_path, tiny_model):
    fasta = tmp_path / "broken.fasta"
    fasta.write_text(">ok\nMKV\n>bad\nMK7V\n")
    job = make_job(tmp_path, fasta, tiny_model)
    with pytest.raises(SystemExit) as exit_info:
        run_or_record_failure(job)
    message = str(exit_info.value)
    assert "\n" not in message
    assert message == (
        f"seqembed: InputError: {fasta}: line 4: record 'bad' has characters outside the "
        "alphabet: '7'"
    )
    record = json.loads(open(job.record).read())
    assert record["status"] == "failed" and record["error_type"] == "InputError"
    assert not (tmp_path / "out" / "broken.pt").exists()


def test_missing_model_is_a_model_error(tmp_path, fasta_set):
    job = make_job(tmp_path, fasta_set["gamma"], tmp_path / "esm2_missing.pt")
    with pytest.raises(SystemExit, match=r"ModelError: .*model checkpoint not found"):
        run_or_record_failure(job)


def test_identical_sequences_are_computed_once_and_copied(tmp_path, tiny_model):
    fasta = tmp_path / "repeats.fasta"
    # c equals a; d equals b up to the truncation length (40), so the model sees it the same
    long_b = "MKVLAAGIVLLLSSAQAQAIDLEKNGWTPEKTLRAAGVAS"
    fasta.write_text(
        f">a\nMKTAYIAKQR\n>b\n{long_b}\n>c\nmktayiakqr*\n>d\n{long_b}WWWW\n>e\nGGGGHHHH\n"
    )
    job = make_job(tmp_path, fasta, tiny_model, truncation=40)
    record = run_embed_job(job)
    assert record["sequences"] == 5 and record["unique_sequences"] == 3
    assert record["real_tokens"] == (10 + 2) + (40 + 2) + (8 + 2)

    result = torch.load(job.output)
    records = read_fasta(fasta, PROTEIN_ALPHABET)
    expected = reference_embeddings(tiny_model, records.sequences, [3], 40)[3]
    got = result["mean_representations"][3]
    assert result["ids"] == ["a", "b", "c", "d", "e"]
    assert (got - expected).abs().max().item() <= 1e-5
    assert torch.equal(got[0], got[2]) and torch.equal(got[1], got[3])


def test_a_retry_after_a_done_attempt_restores_it_or_computes_again(tmp_path, tiny_model):
    # a packed SLURM submission: another file of the group failed, Snakemake removed this
    # file's finished output and runs the group again as attempt 2
    from dataclasses import replace

    from seqembed import runstate

    fasta = tmp_path / "good.fasta"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nGGGGHHHH\n")
    job = make_job(tmp_path, fasta, tiny_model)
    runstate.reset(job.state_dir)
    first = run_or_record_failure(job)
    made = open(job.output, "rb").read()
    os.unlink(job.output)
    restored = run_or_record_failure(replace(job, attempt=2))
    assert open(job.output, "rb").read() == made
    assert restored["status"] == "done" and restored["restored_from_attempt"] == 1
    assert restored["finished"] == first["finished"]  # not computed again
    # the input changed meanwhile: the old result is not valid, it is computed again
    os.unlink(job.output)
    fasta.write_text(">a\nMKTAYIAKQRW\n")
    again = run_or_record_failure(replace(job, attempt=3))
    assert again["status"] == "done" and "restored_from_attempt" not in again
    assert torch.load(job.output)["ids"] == ["a"]
    # none of this counted as a failure
    assert runstate.last_failures(job.state_dir) == {}


def test_a_process_start_is_dated_to_the_clock_tick_not_the_second():
    """psutil dates a process from the boot time rounded to whole seconds: up to a second
    before it was even started. A child can start no earlier than its parent asked for it
    (less a tick of 10 ms), and no later than its first line runs."""
    import subprocess
    import sys
    import time

    code = (
        "import time; first = time.time()\n"
        "from seqembed.job.embed import process_started\n"
        "print(first, process_started())"
    )
    for _ in range(3):
        asked = time.time()
        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        first, started = map(float, output.stdout.split())
        assert asked - 0.011 <= started <= first


def test_a_retry_the_abort_stops_keeps_the_files_last_failure(tmp_path, tiny_model, monkeypatch):
    # attempt 1 runs out of memory; its retry is computing when other files' failures abort
    # the run and is stopped on its way: the file failed with OOM, it was not merely aborted
    # (a SLURM run reported such a file as Aborted, one OOM file short of the three counted)
    from dataclasses import replace

    from seqembed import runstate
    from seqembed.errors import Aborted, OutOfMemory
    from seqembed.job import attempts

    fasta = tmp_path / "retried.fasta"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    job = make_job(tmp_path, fasta, tiny_model)
    runstate.reset(job.state_dir)

    def out_of_memory(job, **_):
        raise OutOfMemory("moving the model: out of memory")

    def stopped_by_the_abort(job, **_):
        for other in ("x", "y", "z"):
            runstate.record_outcome(job.state_dir, other, f"{other}.fasta", "Error", "broken")
        reason = runstate.abort_reason(job.state_dir)
        assert reason
        raise Aborted(f"stopped: {reason}")

    monkeypatch.setattr(attempts, "run_embed_job", out_of_memory)
    with pytest.raises(SystemExit):
        run_or_record_failure(job)
    monkeypatch.setattr(attempts, "run_embed_job", stopped_by_the_abort)
    with pytest.raises(SystemExit) as exit_info:
        run_or_record_failure(replace(job, attempt=2))
    assert str(exit_info.value) == (
        f"seqembed: OOM: {fasta}: moving the model: out of memory (not retried: the run was "
        "aborted)"
    )
    record = json.loads(open(job.record).read())
    assert (record["attempt"], record["error_type"]) == (2, "OOM")
    assert [a["error_type"] for a in record["previous_attempts"]] == ["OOM"]
