"""Tiny model folders around the stand-ins in tests/standins (see its README): the files a
hub folder of the real model holds (its code, config.json, tokenizer files, weights), with a
small configuration and random weights."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import torch
from reference import built_by_hand
from safetensors.torch import save_file

STANDINS = Path(__file__).resolve().parent / "standins"


def _write_random_weights(folder: Path, seed: int) -> None:
    """Random weights, larger than the code's own init, so that layers differ clearly."""
    torch.manual_seed(seed)
    network = built_by_hand(folder)
    with torch.no_grad():
        for parameter in network.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(std=0.15)
    state = {name: value.contiguous() for name, value in network.state_dict().items()}
    save_file(state, folder / "model.safetensors")


def write_tiny_nt_v2(folder: str | Path, seed: int = 0) -> Path:
    """A Nucleotide Transformer v2 folder as InstaDeep's hub folders hold it: its code, a
    config.json with no model type and no AutoModel, the slow EsmTokenizer's files over the
    6-mer vocabulary with no EOS; 2 layers of 32."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    for name in ("esm_config.py", "modeling_esm.py"):
        shutil.copy(STANDINS / "nucleotide_transformer_v2" / name, folder / name)
    kmers = ["".join(letters) for letters in itertools.product("ATCG", repeat=6)]
    tokens = ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>", *kmers, *"ATCGN"]
    (folder / "vocab.txt").write_text("\n".join(tokens))
    config = {
        "add_bias_fnn": False,
        "architectures": ["EsmForMaskedLM"],
        "auto_map": {
            "AutoConfig": "esm_config.EsmConfig",
            "AutoModelForMaskedLM": "modeling_esm.EsmForMaskedLM",
        },
        "attention_probs_dropout_prob": 0.0,
        "emb_layer_norm_before": False,
        "esmfold_config": None,
        "hidden_dropout_prob": 0.0,
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "is_folding_model": False,
        "layer_norm_eps": 1e-12,
        "mask_token_id": 2,
        "max_position_embeddings": 2050,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "pad_token_id": 1,
        "position_embedding_type": "rotary",
        "tie_word_embeddings": False,
        "token_dropout": False,
        "use_cache": False,
        "vocab_list": None,
        "vocab_size": len(tokens),
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = {"eos_token": None, "model_max_length": 2048, "tokenizer_class": "EsmTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    special = {"cls_token": "<cls>", "mask_token": "<mask>", "pad_token": "<pad>"}
    (folder / "special_tokens_map.json").write_text(json.dumps({**special, "unk_token": "<unk>"}))
    _write_random_weights(folder, seed)
    return folder


def write_tiny_esm_plusplus(folder: str | Path, seed: int = 0) -> Path:
    """An ESM++ folder as Synthyra's hub folders hold it: its code, a config.json of model
    type ESMplusplus naming each class, and the tokenizer files its own tokenizer class saves
    (a class transformers does not know); 3 layers of 64, 4 heads, vocabulary 64."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    shutil.copy(STANDINS / "esm_plusplus" / "modeling_esm_plusplus.py", folder)
    module = "modeling_esm_plusplus"
    config = {
        "architectures": ["ESMplusplusForMaskedLM"],
        "auto_map": {
            "AutoConfig": f"{module}.ESMplusplusConfig",
            "AutoModel": f"{module}.ESMplusplusModel",
            "AutoModelForMaskedLM": f"{module}.ESMplusplusForMaskedLM",
        },
        "hidden_size": 64,
        "model_type": "ESMplusplus",
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "tie_word_embeddings": False,
        "vocab_size": 64,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    network = built_by_hand(folder)
    network.tokenizer.save_pretrained(folder)
    _write_random_weights(folder, seed)
    return folder
