"""Proteins longer than the model's window, embedded whole (`long_sequences: windows`), in
real `snakemake` runs, against an independent computation: fair-esm's own forward pass on
each window as a sequence of its own, stitched by the README's rule, written here from the
rule's words (not seqembed.compute.windows): every per-residue row, mean and BOS within 1e-5,
in `.pt` and `.h5`, whole and in shards, a duplicate long sequence among them, a worker killed
mid-windows; which files a change of the setting reruns; truncate mode as fair-esm's."""

from __future__ import annotations

import argparse
import os
import random
import signal
import time

import esm
import h5py
import numpy as np
import pytest
import torch
import yaml
from helpers import jobs_to_run, progress_of, record, snakemake, start_run, wait_for
from reference import reference_outputs

from seqembed.demo import random_protein

pytestmark = pytest.mark.workflow

WINDOW, OVERLAP, LAYERS = 1022, 256, [2, 3]


def stitched_reference(model_path, sequence: str, width: int, overlap: int) -> dict:
    """The rule, from its words: windows of `width` at 0, S, 2S, ... while start + width <
    L, and one ending at the end; each residue from the window where it is farthest from
    the nearer edge, the earlier on a tie; mean of the rows; BOS of the first window."""
    torch.serialization.add_safe_globals([argparse.Namespace])
    network, alphabet = esm.pretrained.load_model_and_alphabet_local(str(model_path))
    network.eval()
    converter = alphabet.get_batch_converter()
    length, step = len(sequence), width - overlap
    starts = list(range(0, length - width, step)) + [length - width]
    outputs = []
    with torch.no_grad():
        for start in starts:
            _, _, tokens = converter([("w", sequence[start : start + width])])
            outputs.append(network(tokens, repr_layers=LAYERS)["representations"])
    rows = {layer: torch.empty(length, network.embed_dim) for layer in LAYERS}
    for residue in range(length):
        distances = [
            min(residue - s, s + width - 1 - residue) if s <= residue < s + width else -1
            for s in starts
        ]
        best = distances.index(max(distances))  # index() finds the earlier of a tie
        for layer in LAYERS:
            rows[layer][residue] = outputs[best][layer][0, 1 + residue - starts[best]]
    return {
        "per_tok": rows,
        "mean": {layer: rows[layer].mean(0) for layer in LAYERS},
        "bos": {layer: outputs[0][layer][0, 0] for layer in LAYERS},
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """long.fasta: short proteins around ones of 1,023, 2,044, 3,000 and 5,000 residues, and
    the 3,000 again under another id; short.fasta: nothing beyond the window."""
    rng = random.Random(21)
    folder = tmp_path_factory.mktemp("long-inputs")
    long = {f"short_{i}": random_protein(rng, rng.randint(30, 400)) for i in range(6)}
    for length in (1023, 2044, 3000, 5000):
        long[f"long_{length}"] = random_protein(rng, length)
    long["copy_of_3000"] = long["long_3000"]
    long["short_last"] = random_protein(rng, 90)
    short = {f"s{i}": random_protein(rng, rng.randint(30, 800)) for i in range(5)}
    for name, sequences in (("long", long), ("short", short)):
        (folder / f"{name}.fasta").write_text("".join(f">{k}\n{v}\n" for k, v in sequences.items()))
    return folder, long


def configure(workdir, model, inputs_folder, **settings):
    base = {
        "input_dir": str(inputs_folder),
        "model": str(model),
        "device": "cpu",
        "cpu_slots": 2,
        "lock_dir": str(workdir / "locks"),
        "precision": "fp32",  # compared with fair-esm in fp32
        "layers": LAYERS,
        "include": ["mean", "per_tok", "bos"],
    }
    workdir.mkdir(exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump({**base, **settings}))


def close(got, want, tolerance=1e-5) -> bool:
    got = torch.as_tensor(np.asarray(got)).float()
    return got.shape == want.shape and (got - want).abs().max().item() <= tolerance


def check_output(path, sequences: dict, model) -> None:
    """Every kind and layer of every sequence against the reference: windows for the long
    ones, fair-esm's extraction for the others."""
    short = reference_outputs(model, list(sequences.values()), LAYERS, WINDOW)
    if path.suffix == ".pt":
        saved = torch.load(path)
        assert saved["long_sequences"] == "windows" and saved["window_overlap"] == OVERLAP
        assert saved["truncation"] == WINDOW

        def got(kind, layer, index):
            names = {"mean": "mean_representations", "bos": "bos_representations"}
            return saved[names.get(kind, "representations")][layer][index]
    else:
        saved = h5py.File(path, "r")
        assert saved.attrs["long_sequences"] == "windows"
        assert saved.attrs["window_overlap"] == OVERLAP and saved.attrs["truncation"] == WINDOW
        offsets = saved["offsets"][:]

        def got(kind, layer, index):
            if kind == "per_tok":
                return saved[f"per_tok/{layer}"][offsets[index] : offsets[index + 1]]
            return saved[f"{kind}/{layer}"][index]

    for index, (name, sequence) in enumerate(sequences.items()):
        if len(sequence) > WINDOW:
            want = stitched_reference(model, sequence, WINDOW, OVERLAP)
        else:
            want = {kind: {la: short[kind][la][index] for la in LAYERS} for kind in short}
        for kind in ("mean", "bos", "per_tok"):
            for layer in LAYERS:
                assert close(got(kind, layer, index), want[kind][layer]), (name, kind, layer)


def test_windows_equal_the_rule_and_a_change_reruns_only_files_with_long_sequences(
    tmp_path, tiny_model, inputs
):
    folder, sequences = inputs
    workdir = tmp_path / "run"
    configure(workdir, tiny_model, folder)
    result = snakemake(workdir)  # the default: cut at the window, as fair-esm's extraction
    assert result.returncode == 0, result.stderr
    assert record(workdir, "long")["truncated_sequences"] == 5
    assert "truncated sequences 5 (long_sequences: truncate)" in result.stdout

    # the setting reruns the file with long sequences alone, and a worker killed in the
    # middle of their windows costs one retry, whose output is the same
    windows = ["--config", "long_sequences=windows"]
    assert jobs_to_run(workdir, *windows)["embed"] == ["long"]
    faults = {"files": {"long": {"seconds_per_batch": 0.25}}}
    earlier = progress_of(workdir, "long")["worker_pid"]
    run = start_run(workdir, faults, *windows, "toks_per_batch=1024")

    def new_worker():
        worker = progress_of(workdir, "long").get("worker_pid")
        return worker if worker != earlier else None

    worker = wait_for(new_worker)
    # windows come first, one a batch, the 5,000's seven first: a few of them are done
    time.sleep(0.75)
    assert not progress_of(workdir, "long").get("done")
    os.kill(worker, signal.SIGKILL)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output
    done = record(workdir, "long")
    assert done["attempt"] == 2 and done["previous_attempts"][0]["error_type"] == "Crash"
    # 1023: 2 windows, 2044: 3, 3000: 4 (once for both copies), 5000: 7
    assert (done["windowed_sequences"], done["windows"], done["truncated_sequences"]) == (5, 16, 0)
    assert "sequences embedded whole in windows 5 (16 windows); truncated sequences 0" in output
    check_output(workdir / "results" / "embeddings" / "long.pt", sequences, tiny_model)

    # another overlap, or back to truncating: the file with long sequences alone again
    assert jobs_to_run(workdir, *windows, "window_overlap=100")["embed"] == ["long"]
    assert jobs_to_run(workdir)["embed"] == ["long"]
    assert "embed" not in jobs_to_run(workdir, *windows)


def test_windows_in_h5_in_shards(tmp_path, tiny_model, inputs):
    """.h5 (per-residue rows at offsets) from two shards gathered: each shard's own rows,
    offsets rebased; a sequence's windows in its shard."""
    folder, sequences = inputs
    sharded = tmp_path / "sharded"
    assert (folder / "long.fasta").stat().st_size > 10_000  # the smallest shard size
    configure(
        sharded, tiny_model, folder, long_sequences="windows", output_format="h5", shard_size=10_000
    )
    result = snakemake(sharded)
    assert result.returncode == 0, result.stderr
    done = record(sharded, "long")
    # the copy of the 3,000 is in the other shard: computed there too (4 windows more), as
    # copies in two shards always are; a sequence's windows stay in its shard
    assert len(done["shards"]) == 2 and done["windows"] == 20
    check_output(sharded / "results" / "embeddings" / "long.h5", sequences, tiny_model)
