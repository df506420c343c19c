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


def recipe_masked_lm(folder):
    """The model's network with its weights, built by `built_by_hand` and loaded strictly."""
    from pathlib import Path

    from safetensors.torch import load_file

    network = built_by_hand(folder)
    network.load_state_dict(load_file(Path(folder) / "model.safetensors"), strict=True)
    return network


def built_by_hand(folder):
    """The masked-LM class of a model's own code made for transformers 4 (Nucleotide
    Transformer v2, ESM++), as its model card loads it (`AutoModelForMaskedLM`), built on
    transformers 5 the way a user of such code does it by hand, none of seqembed's loading
    code: the names it imports put back while it is imported, the config attributes it reads
    given, the tied-weights map `{}` (FastPLMs' own fix) while it is built, the attention-mask
    helpers bound to its modules; built from its config on the CPU, its weights random."""
    import inspect
    import sys
    import types

    import transformers.modeling_utils as modeling_utils
    from transformers import AutoConfig, PreTrainedModel
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    def extended_mask(self, mask, shape=None):
        return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min

    def head_mask(self, mask, layers):
        return [None] * layers

    added = [name for name in ("find_pruneable_heads_and_indices", "prune_linear_layer")]
    added = [name for name in added if not hasattr(modeling_utils, name)]
    for name in added:
        setattr(modeling_utils, name, None)  # imported, never called
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    for name in ("is_decoder", "add_cross_attention"):
        if not hasattr(config, name):
            setattr(config, name, False)
    try:
        model_class = get_class_from_dynamic_module(config.auto_map["AutoModelForMaskedLM"], folder)
    finally:
        for name in added:
            delattr(modeling_utils, name)
    module = sys.modules[model_class.__module__]
    classes = [
        member
        for _, member in inspect.getmembers(module, inspect.isclass)
        if issubclass(member, PreTrainedModel) and "all_tied_weights_keys" not in vars(member)
    ]
    for member in classes:
        member.all_tied_weights_keys = {}
    try:
        network = model_class._from_config(config)
    finally:
        for member in classes:
            del member.all_tied_weights_keys
    for part in network.modules():
        if isinstance(part, PreTrainedModel) and not hasattr(part, "get_head_mask"):
            part.get_extended_attention_mask = types.MethodType(extended_mask, part)
            part.get_head_mask = types.MethodType(head_mask, part)
    return network.eval()
