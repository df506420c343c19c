"""The yardstick: fair-esm's plain forward pass, one sequence at a time, no batching, no
padding, fair-esm's own batch converter and truncation, and what fair-esm's extract script
takes from it: the mean over residue positions (`representations[layer][0, 1 : length + 1]
.mean(0)`), the per-residue rows (`[0, 1 : length + 1]`) and the BOS token (`[0, 0]`)."""

from __future__ import annotations

import argparse

import esm
import torch


def reference_outputs(model_path, sequences: list[str], layers: list[int], truncation: int):
    """kind (mean, bos: [N, D]; per_tok: a list of [L_i, D]) -> layer -> values."""
    torch.serialization.add_safe_globals([argparse.Namespace])
    network, alphabet = esm.pretrained.load_model_and_alphabet_local(str(model_path))
    network.eval()
    converter = alphabet.get_batch_converter(truncation_seq_length=truncation)
    rows = {kind: {layer: [] for layer in layers} for kind in ("mean", "bos", "per_tok")}
    with torch.no_grad():
        for sequence in sequences:
            _, _, tokens = converter([("x", sequence)])
            out = network(tokens, repr_layers=layers)
            length = min(len(sequence), truncation)
            for layer in layers:
                representation = out["representations"][layer][0]
                rows["per_tok"][layer].append(representation[1 : length + 1])
                rows["mean"][layer].append(representation[1 : length + 1].mean(0))
                rows["bos"][layer].append(representation[0])
    for kind in ("mean", "bos"):
        rows[kind] = {layer: torch.stack(vectors) for layer, vectors in rows[kind].items()}
    return rows


def reference_embeddings(model_path, sequences: list[str], layers: list[int], truncation: int):
    return reference_outputs(model_path, sequences, layers, truncation)["mean"]


def recipe_network(folder, trust_remote_code: bool = False):
    """A Hugging Face model as its README's recipe loads it, on transformers 5 where
    `from_pretrained` cannot build code made for transformers 4 (DNABERT-2/-S): built from its
    config on the CPU (`from_config` builds no meta tensors) and its safetensors loaded into
    it, strictly; none of seqembed's loading code. The Triton kernel DNABERT-2's code binds is
    unbound, as every user of that code does by hand."""
    import sys
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    if not trust_remote_code:
        return AutoModel.from_pretrained(folder).eval()
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    network = AutoModel.from_config(config, trust_remote_code=True)
    network.load_state_dict(load_file(Path(folder) / "model.safetensors"), strict=True)
    module = sys.modules[type(network).__module__]
    if getattr(module, "flash_attn_qkvpacked_func", None) is not None:
        module.flash_attn_qkvpacked_func = None
    return network.eval()
