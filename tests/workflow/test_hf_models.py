"""Hugging Face models through the unchanged workflow, in real `snakemake` runs: ESM-2 from a
transformers folder equal to fair-esm's forward pass, VirNucPro's DNABERT-S features for
nucleotide files beside the protein files (and its merge step pairing the two runs by id),
and the failure semantics (an input error, an out-of-memory back-off, a bad model folder)."""

from __future__ import annotations

import csv
import json
import random
import shutil

import pytest
import torch
import yaml
from helpers import (
    NAMES,
    assert_embeddings_correct,
    failed_lines,
    make_workdir,
    record,
    snakemake,
)
from reference import recipe_network, reference_embeddings
from transformers import AutoTokenizer

from seqembed.demo import random_protein
from seqembed.demo_hf import random_dna

pytestmark = pytest.mark.workflow


def write_config(workdir, **settings):
    base = {"device": "cpu", "cpu_slots": 2, "lock_dir": str(workdir / "locks")}
    base["precision"] = "fp32"  # compared with fair-esm's and transformers' fp32
    (workdir / "config.yaml").write_text(yaml.safe_dump({**base, **settings}))


def test_esm2_from_a_transformers_folder_equals_fair_esm(tmp_path, hf_esm, tiny_model):
    workdir = make_workdir(tmp_path / "run", hf_esm)
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr
    # the folder holds the tiny model's weights: fair-esm's forward pass on them is the yardstick
    assert_embeddings_correct(workdir, tiny_model, NAMES)
    assert record(workdir, "alpha")["model"] == "tiny-esm2"


def paired_inputs(folder, count=12, seed=3):
    """One sample as VirNucPro has it: reads (nucleotide) and their translations (protein),
    the same ids in both."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"read_{i:03d}" for i in range(count)]
    with (
        open(folder / "sample.fna", "w") as nucleotide,
        open(folder / "sample.faa", "w") as protein,
    ):
        for name in ids:
            dna = random_dna(rng, rng.randint(150, 500))
            nucleotide.write(f">{name}\n{dna}\n")
            protein.write(f">{name}\n{random_protein(rng, len(dna) // 3)}\n")
    return ids


def test_virnucpro_pairs_dnabert_s_and_esm_features_by_id(tmp_path, dna_remote, tiny_model):
    workdir = tmp_path / "virnucpro"
    ids = paired_inputs(workdir / "reads")
    common = {"input_dir": "reads", "output_layout": "virnucpro", "layers": "last"}
    write_config(workdir, **common, input_glob="*.faa", model=str(tiny_model), output_dir="esm")
    assert snakemake(workdir).returncode == 0
    write_config(
        workdir,
        **common,
        input_glob="*.fna",
        model=str(dna_remote),
        trust_remote_code=True,
        output_dir="dnabert_s",
    )
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr

    dna = torch.load(workdir / "dnabert_s" / "embeddings" / "sample.pt")
    protein = torch.load(workdir / "esm" / "embeddings" / "sample.pt")
    # exactly what VirNucPro's DNABERT-S extraction saves: plain lists of Python floats
    assert set(dna) == {"nucleotide", "data"} and dna["nucleotide"] == ids
    assert all(set(item) == {"label", "mean_representation"} for item in dna["data"])
    assert all(type(value) is float for value in dna["data"][0]["mean_representation"])
    # VirNucPro's merge: pair by id, DNA vector first, then the protein's
    by_id = {item["label"]: item["mean_representation"] for item in dna["data"]}
    merged = {
        name: torch.cat([torch.tensor(by_id[name]), vector])
        for name, vector in zip(protein["proteins"], protein["data"], strict=True)
    }
    assert list(merged) == ids and merged[ids[0]].shape == (32 + 32,)

    # each half equals its reference: transformers one sequence at a time (mean over every
    # token, special tokens included), and fair-esm's forward pass
    tokenizer = AutoTokenizer.from_pretrained(dna_remote)
    network = recipe_network(dna_remote, trust_remote_code=True)
    sequences = {}
    for line in (workdir / "reads" / "sample.fna").read_text().split(">")[1:]:
        name, sequence = line.split("\n", 1)
        sequences[name] = sequence.replace("\n", "")
    proteins = [
        line.split("\n", 1)[1].replace("\n", "")
        for line in (workdir / "reads" / "sample.faa").read_text().split(">")[1:]
    ]
    expected_protein = reference_embeddings(tiny_model, proteins, [3], 1022)[3]
    with torch.no_grad():
        for index, name in enumerate(ids):
            tokens = tokenizer(sequences[name], return_tensors="pt")["input_ids"]
            expected_dna = network(tokens)[0][0].mean(0)
            assert (merged[name][:32] - expected_dna).abs().max().item() <= 1e-5
            assert (merged[name][32:] - expected_protein[index]).abs().max().item() <= 1e-5


def test_a_dna_run_keeps_the_failure_semantics(tmp_path, dna_model):
    workdir = tmp_path / "dna"
    paired_inputs(workdir / "reads", count=30, seed=4)
    shutil.copy(workdir / "reads" / "sample.fna", workdir / "reads" / "second.fna")
    (workdir / "reads" / "rna.fna").write_text(">r1\nACGUACGU\n")
    write_config(workdir, input_dir="reads", input_glob="*.fna", model=str(dna_model))
    result = snakemake(workdir, faults={"oom_above_tokens": 400})
    assert result.returncode == 2, result.stderr
    assert failed_lines(workdir) == [
        "reads/rna.fna|InputError|reads/rna.fna: line 2: record 'r1' has characters outside "
        "the alphabet: 'U'"
    ]
    for name in ("sample", "second"):
        done = record(workdir, name)
        assert done["status"] == "done" and done["oom_backoffs"] >= 1, done
    # the plan balances what the model sees: byte-pair tokens, several letters each
    plan = json.loads((workdir / "results" / "plan.json").read_text())
    assert plan["load_unit"] == "tokens"
    with open(workdir / "results" / "plan.tsv", newline="") as handle:
        sample = next(
            row for row in csv.DictReader(handle, delimiter="\t") if row["name"] == "sample"
        )
    assert int(sample["tokens"]) == done_tokens(workdir, "sample")
    assert int(sample["tokens"]) < 0.6 * int(sample["residues"])
    assert torch.load(workdir / "results" / "embeddings" / "sample.pt")["mean_representations"][
        2
    ].shape == (30, 32)


def done_tokens(workdir, name) -> int:
    """The tokens the job's model saw (every sequence once: no duplicates in these files)."""
    return record(workdir, name)["real_tokens"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("weights", "has no weights (model.safetensors"),
        ("hub", "model tiny-org/tiny-dna is not in the Hugging Face cache "),
    ],
)
def test_a_bad_model_folder_stops_the_run_in_one_line(tmp_path, dna_remote, damage, message):
    """In a real run; the pre-flight's other refusals: tests/unit/test_hf_backend.py."""
    workdir = tmp_path / "bad"
    paired_inputs(workdir / "reads", count=3)
    folder = tmp_path / "model"
    shutil.copytree(dna_remote, folder)
    settings = {"trust_remote_code": True}
    model = str(folder)
    if damage == "weights":
        (folder / "model.safetensors").unlink()
    else:  # a hub id, and a cache that does not hold it
        model, settings["model_cache"] = "tiny-org/tiny-dna", str(tmp_path / "hub")
    write_config(workdir, input_dir="reads", input_glob="*.fna", model=model, **settings)
    result = snakemake(workdir)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("seqembed: pre-flight failed: ") and message in last, last
    if damage == "hub":
        assert last.endswith(
            "`hf download tiny-org/tiny-dna` (HF_HUB_CACHE="
            + str(tmp_path / "hub")
            + "), or set model to a local model folder"
        )
    assert not (workdir / "results" / "embeddings").exists()
    assert json.dumps(last).count("\\n") == 0
