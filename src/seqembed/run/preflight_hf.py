"""Pre-flight checks of a model in Hugging Face format (seqembed.run.preflight runs them): a
folder or cached hub id with weights, a tokenizer and, where the model ships its own code,
that code trusted, its imports installed, and the model buildable from its config as the
workers will build it, its layers readable, and the outputs asked for ones it can give."""

from __future__ import annotations

from pathlib import Path


class PreflightError(Exception):
    pass


HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
HF_TOKENIZER = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json")


def check_model_code(folder: Path, settings: dict) -> None:
    """The model's own code is there, and what it imports is installed (DNABERT-2's code
    imports einops): otherwise every job would fail loading it."""
    import importlib.util

    from transformers.dynamic_module_utils import get_imports

    from seqembed.compute.hf_models import code_files

    for name in code_files(settings):
        path = folder / name
        if not path.is_file():
            raise PreflightError(f"model folder {folder} names its code {name}, which is missing")
        missing = [
            package
            for package in get_imports(path)
            if not (folder / f"{package}.py").is_file()
            and importlib.util.find_spec(package) is None
        ]
        if missing:
            raise PreflightError(
                f"model code {path} imports {', '.join(missing)}, not installed here: "
                f"pip install {' '.join(missing)}"
            )


def check_hf_model(config: dict) -> str:
    """A Hugging Face folder (or cached hub id) with a config, weights and a tokenizer, its own
    code allowed if it has some, the requested layers within its depth, and outputs it can
    give; read from the files alone (no weights loaded). Returns the folder."""
    from seqembed.compute.hf_models import (
        is_protein_folder,
        model_config,
        model_folder,
        remote_code,
    )
    from seqembed.errors import ModelError, ReadError

    model = config["model"]
    try:
        folder = model_folder(model, config["model_cache"])
        settings = model_config(folder)
    except (ModelError, ReadError) as error:
        raise PreflightError(str(error)) from None
    if not any((folder / name).is_file() for name in HF_WEIGHTS):
        raise PreflightError(f"model folder {folder} has no weights ({', '.join(HF_WEIGHTS)})")
    if not any((folder / name).is_file() for name in HF_TOKENIZER):
        raise PreflightError(f"model folder {folder} has no tokenizer ({', '.join(HF_TOKENIZER)})")
    own_code = remote_code(settings)
    if own_code and not config["trust_remote_code"]:
        raise PreflightError(
            f"model {model} ships its own code ({own_code}): set trust_remote_code: true to run "
            "it (only for models whose code you trust)"
        )
    if own_code:
        check_model_code(folder, settings)
    depth = settings.get("num_hidden_layers")
    layers = []
    if depth is not None:
        from seqembed.compute.backends import resolve_layers

        try:
            layers = resolve_layers(config["layers"], depth, model)
        except ModelError as error:
            raise PreflightError(f"config key 'layers': {error}") from None
    protein = is_protein_folder(folder, settings)
    if not protein and "per_tok" in config["include"]:
        raise PreflightError(
            f"config key 'include': per_tok is written for protein models; {model} is a "
            "nucleotide model (mean and bos are)"
        )
    if not protein and config["long_sequences"] == "windows":
        raise PreflightError(
            f"config key 'long_sequences': windows are for protein models; {model} is a "
            "nucleotide model (raise truncation: reads are cut there, and ALiBi or rotary "
            "models such as DNABERT-2 have no position limit)"
        )
    check_model_builds(model, folder, bool(own_code), layers, protein)
    return str(folder)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ""


def check_model_builds(
    model: str, folder: Path, own_code: bool, layers: list[int], protein: bool = False
) -> None:
    """The network built from its config as the workers will build it, without its weights:
    a model whose code cannot be built (code made for another transformers) stops the run
    here, once, instead of failing every file. transformers' own classes are built on the meta
    device, as the workers' loading builds them; a model's own code on the CPU
    (seqembed.compute.backends.own_code), which costs its size in memory for a moment, and is
    run once on two short sequences when layers other than the last are asked for, to see
    that its code keeps them one row per token (DNABERT-2's does not). A protein model's
    tokenizer (its code's own, else its files') must have the BOS, EOS and padding tokens a
    residue-by-residue batch needs."""
    import torch

    from seqembed.compute.backends.layer_taps import check_layers_readable, find_blocks
    from seqembed.compute.backends.own_code import build_without_weights
    from seqembed.compute.hf_models import offline
    from seqembed.errors import ModelError

    offline()
    tokenizer = None
    try:
        if own_code:
            network, tokenizer = build_without_weights(folder)
        else:
            from transformers import AutoConfig, AutoModel

            with torch.device("meta"):
                network = AutoModel.from_config(
                    AutoConfig.from_pretrained(folder, local_files_only=True)
                )
    except Exception as error:  # noqa: BLE001 - any reason is one line for the user
        raise PreflightError(
            f"model {model} cannot be built from {folder}: {type(error).__name__}: "
            f"{_first_line(error)}"
        ) from None
    if protein:
        from seqembed.compute.backends.hf import protein_special_ids

        try:
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(
                    folder, trust_remote_code=own_code, local_files_only=True
                )
            protein_special_ids(tokenizer, model)
        except ModelError as error:
            raise PreflightError(str(error)) from None
        except Exception as error:  # noqa: BLE001 - any reason is one line for the user
            raise PreflightError(
                f"model {model}: its tokenizer cannot be loaded from {folder}: "
                f"{type(error).__name__}: {_first_line(error)}"
            ) from None
    depth = network.config.num_hidden_layers
    if not layers or layers == [depth]:
        return
    try:
        if not own_code and not find_blocks(network, depth):
            raise ModelError(f"{model}: only the last layer ({depth}) can be read")
        if own_code:
            check_layers_readable(network, layers, model)
    except ModelError as error:
        raise PreflightError(f"config key 'layers': {error}") from None
    except Exception as error:  # noqa: BLE001 - its code failed on a short input
        raise PreflightError(
            f"model {model} fails on two short sequences: {type(error).__name__}: "
            f"{_first_line(error)}"
        ) from None
