"""Models that ship their own code made for transformers 4, through the workflow in real
`snakemake` runs (a fresh process: their code is imported there the first time, as on a
user's machine), each equal to what its own documentation computes: Nucleotide Transformer
v2 (its model card's mean over the attention mask) and ESM C through ESM++ (its README's
`model(**tokenizer(...))`). The stand-ins are tests/standins (their README says which traits
of the real code they reproduce); the real code ran in development (docs/benchmarks.md)."""

from __future__ import annotations

import random

import h5py
import pytest
import torch
import yaml
from helpers import snakemake
from reference import recipe_masked_lm
from standin_models import write_tiny_esm_plusplus, write_tiny_nt_v2
from transformers import AutoTokenizer

from seqembed.demo import random_protein
from seqembed.demo_hf import random_dna

pytestmark = pytest.mark.workflow


def write_inputs(folder, sequences: dict[str, str]) -> None:
    folder.mkdir(parents=True)
    (folder / "sample.fa").write_text("".join(f">{k}\n{v}\n" for k, v in sequences.items()))


def configure(workdir, model, **settings):
    base = {"input_dir": "inputs", "model": str(model), "device": "cpu", "cpu_slots": 1}
    base["precision"] = "fp32"  # compared with the recipe in fp32
    base["lock_dir"] = str(workdir / "locks")
    (workdir / "config.yaml").write_text(yaml.safe_dump({**base, **settings}))


def close(got, want, tolerance=1e-5) -> bool:
    """Within 1e-5 of the values' scale (the random weights grow the residual stream to ~10)."""
    scale = max(1.0, want.abs().max().item())
    return (torch.as_tensor(got).float() - want).abs().max().item() <= tolerance * scale


def test_nucleotide_transformer_v2_equals_its_model_cards_recipe(tmp_path):
    model = write_tiny_nt_v2(tmp_path / "nucleotide-transformer-v2")
    rng = random.Random(5)
    reads = {f"read_{i}": random_dna(rng, rng.randint(20, 400)) for i in range(8)}
    reads["with_n"] = "ACGTGTACNTGCACGGANCGACTAGTCTGA"  # the card's own example: Ns split k-mers
    workdir = tmp_path / "run"
    write_inputs(workdir / "inputs", reads)
    configure(workdir, model, layers=[0, 1, 2])
    # as the README writes it on a command line
    result = snakemake(workdir, "--config", "trust_remote_code=true")
    assert result.returncode == 0, result.stderr
    output = torch.load(workdir / "results" / "embeddings" / "sample.pt")
    assert output["ids"] == list(reads)

    # the card: hidden_states[layer], mean over the attention mask (<cls> included)
    tokenizer = AutoTokenizer.from_pretrained(model)
    network = recipe_masked_lm(model)
    with torch.no_grad():
        for index, read in enumerate(reads.values()):
            tokens = tokenizer([read], return_tensors="pt")["input_ids"]
            mask = tokens != tokenizer.pad_token_id
            states = network(tokens, attention_mask=mask, output_hidden_states=True).hidden_states
            for layer in (0, 1, 2):
                assert close(output["mean_representations"][layer][index], states[layer][0].mean(0))


def test_esm_c_through_esm_plusplus_equals_its_readme(tmp_path):
    model = write_tiny_esm_plusplus(tmp_path / "esm-plusplus")
    rng = random.Random(6)
    proteins = {f"protein_{i}": random_protein(rng, rng.randint(10, 120)) for i in range(8)}
    workdir = tmp_path / "run"
    write_inputs(workdir / "inputs", proteins)
    configure(workdir, model, layers=[0, 1, 3], include=["mean", "per_tok", "bos"])
    result = snakemake(workdir, "--config", "trust_remote_code=yes", "output_format=h5")
    assert result.returncode == 0, result.stderr

    # the README: model(**tokenizer(sequences, ...)) with the model's own tokenizer; the mean
    # over residues (its current embed_dataset), <cls> as BOS; a block's output as its layer
    network = recipe_masked_lm(model)
    with h5py.File(workdir / "results" / "embeddings" / "sample.h5", "r") as file:
        assert list(file["ids"].asstr()[:]) == list(proteins)
        offsets = file["offsets"][:]
        with torch.no_grad():
            for index, protein in enumerate(proteins.values()):
                encoded = network.tokenizer([protein], return_tensors="pt")
                out = network(**encoded, output_hidden_states=True)
                length = len(protein)
                layers = {
                    0: network.embed(encoded["input_ids"])[0],
                    1: out.hidden_states[0][0],
                    3: out.last_hidden_state[0],
                }
                for layer, states in layers.items():
                    residues = states[1 : length + 1]
                    assert close(file[f"mean/{layer}"][index], residues.mean(0))
                    assert close(file[f"bos/{layer}"][index], states[0])
                    rows = file[f"per_tok/{layer}"][offsets[index] : offsets[index + 1]]
                    assert close(rows, residues)
