"""Shared fixtures: a tiny ESM-2 in fair-esm's official checkpoint layout (made by the
project's own demo code, loaded through fair-esm's real loader) and small FASTA sets."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from seqembed.demo import random_protein, write_fasta, write_tiny_esm2

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_esm2(tmp_path_factory.mktemp("model"), layers=3, dim=32, heads=4, seed=1)


@pytest.fixture(scope="session")
def hf_esm(tiny_model, tmp_path_factory) -> Path:
    """The tiny ESM-2 as a Hugging Face folder: the same weights, transformers' classes."""
    from seqembed.demo_hf import convert_esm2_checkpoint

    return convert_esm2_checkpoint(tiny_model, tmp_path_factory.mktemp("hf") / "tiny-esm2")


@pytest.fixture(scope="session")
def dna_model(tmp_path_factory) -> Path:
    """A tiny BERT with a byte-pair tokenizer trained on random DNA."""
    from seqembed.demo_hf import write_tiny_dna_model

    return write_tiny_dna_model(tmp_path_factory.mktemp("hf") / "tiny-dna")


@pytest.fixture(scope="session")
def dna_remote(tmp_path_factory) -> Path:
    """The same, shipping its own model code as DNABERT-S does."""
    from seqembed.demo_hf import write_tiny_dna_model

    return write_tiny_dna_model(tmp_path_factory.mktemp("hf") / "tiny-dnabert-s", remote_code=True)


def make_fasta_set(folder: Path) -> dict[str, Path]:
    """Four files of 5-40 sequences, 30-300 residues, one with sequences beyond 1,022
    residues, so truncation is exercised at the default setting too."""
    rng = random.Random(11)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, count in [("alpha", 40), ("beta", 23), ("gamma", 12), ("delta", 5)]:
        path = folder / f"{name}.fasta"
        write_fasta(path, name, count, rng, lengths=(30, 300))
        files[name] = path
    with open(files["delta"], "a") as handle:
        for index, length in enumerate([1030, 1400]):
            handle.write(f">delta_long{index}\n{random_protein(rng, length)}\n")
    return files


@pytest.fixture
def fasta_set(tmp_path) -> dict[str, Path]:
    return make_fasta_set(tmp_path / "fasta")


@pytest.fixture
def workdir(tmp_path, tiny_model):
    """A user's folder: four FASTA files and a config for the tiny model on two CPU slots."""
    from helpers import make_workdir  # helpers imports this module

    return make_workdir(tmp_path / "run", tiny_model)
