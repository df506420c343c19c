"""What a nucleotide model really sees of a file, for the plan: its byte-pair tokens, not its
letters (a DNABERT token holds four to six of them, and how many differs from file to file).
Counted with the model's own tokenizer.json through the tokenizers library: no torch, no
model. Protein models see one token per residue, and the plan counts residues for them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from seqembed.compression import CorruptInput, lines

#: sequences encoded at once: the tokenizer runs batches in parallel
BATCH = 1024


def sequences_of(path: str | os.PathLike) -> Iterator[str]:
    """Each record's sequence, upper-cased, read leniently (judging the file is the job's)."""
    chunks: list[str] = []
    started = False
    try:
        for line in lines(path):
            if line.startswith(b">"):
                if started:
                    yield "".join(chunks)
                started, chunks = True, []
            elif started:
                chunks.append(line.strip().decode("ascii", "replace").upper())
    except (OSError, CorruptInput):
        pass
    if started:
        yield "".join(chunks)


def token_counter(config: dict) -> Callable[[str], int] | None:
    """path -> tokens of the whole file (special tokens included, sequences cut at the
    truncation), for a Hugging Face nucleotide model with a tokenizer.json; None otherwise."""
    from seqembed.compute.hf_models import (
        is_hf_model,
        is_protein_folder,
        model_config,
        model_folder,
    )
    from seqembed.errors import ModelError, ReadError

    model = config["model"]
    if not is_hf_model(model):
        return None
    try:
        folder = model_folder(model, config["model_cache"])
        if is_protein_folder(folder, model_config(folder)):
            return None  # a token per residue: counted as residues
    except (ModelError, ReadError):
        return None  # the pre-flight and the jobs say what is wrong
    if not (folder / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    truncation = config["truncation"]

    def count(path: str) -> int:
        total = 0
        batch: list[str] = []
        for sequence in sequences_of(path):
            batch.append(sequence[:truncation])
            if len(batch) == BATCH:
                total += sum(len(e.ids) for e in tokenizer.encode_batch(batch))
                batch = []
        if batch:
            total += sum(len(e.ids) for e in tokenizer.encode_batch(batch))
        return total

    return count
