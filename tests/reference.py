"""The yardstick: fair-esm's plain forward pass, one sequence at a time, no batching, no
padding, fair-esm's own batch converter and truncation, mean over residue positions as in
fair-esm's extract script (`representations[layer][0, 1 : length + 1].mean(0)`)."""

from __future__ import annotations

import argparse

import esm
import torch


def reference_embeddings(model_path, sequences: list[str], layers: list[int], truncation: int):
    torch.serialization.add_safe_globals([argparse.Namespace])
    network, alphabet = esm.pretrained.load_model_and_alphabet_local(str(model_path))
    network.eval()
    converter = alphabet.get_batch_converter(truncation_seq_length=truncation)
    rows = {layer: [] for layer in layers}
    with torch.no_grad():
        for sequence in sequences:
            _, _, tokens = converter([("x", sequence)])
            out = network(tokens, repr_layers=layers)
            length = min(len(sequence), truncation)
            for layer in layers:
                rows[layer].append(out["representations"][layer][0, 1 : length + 1].mean(0))
    return {layer: torch.stack(vectors) for layer, vectors in rows.items()}
