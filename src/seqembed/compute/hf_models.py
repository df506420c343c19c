"""Models in Hugging Face format: a local model folder (config.json, weights, tokenizer files)
or a hub id (`facebook/esm2_t33_650M_UR50D`) already in the local Hugging Face cache. Jobs
never download, as with fair-esm's models; a hub id that is not cached is a ModelError saying
which cache was looked in and how to fill it.

Torch-free: the job tells a protein model from a DNA model (the alphabet it checks its input
with) by reading config.json, before any model work.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from seqembed.errors import ModelError

#: nucleotide models: upper-cased A, C, G, T and N, nothing else
DNA_ALPHABET = frozenset("ACGTN")
#: an id as the hub spells it: owner/name
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hf_model(model: str) -> bool:
    """A folder holding a config.json, or a hub id (owner/name) that is not a local path."""
    path = Path(model).expanduser()
    if path.is_dir():
        return (path / "config.json").is_file()
    return bool(HUB_ID.match(model)) and not path.exists() and not model.endswith(".pt")


def hub_cache(model_cache: str | None) -> Path:
    """Where hub ids are looked up: `model_cache` if set, else Hugging Face's own cache
    ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if model_cache:
        return Path(model_cache).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(cache).expanduser() / "huggingface" / "hub"


def model_folder(model: str, model_cache: str | None = None) -> Path:
    """The local folder behind `model`: the folder itself, or the cached snapshot of a hub id
    (never downloaded here)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    cache = hub_cache(model_cache)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, cache_dir=str(cache), local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise ModelError(
            f"model {model} is not in the Hugging Face cache {cache}, and jobs never download: "
            f"fill it where there is internet with `hf download {model}` (HF_HUB_CACHE={cache}), "
            "or set model to a local model folder"
        ) from None


def model_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ModelError(f"{folder}/config.json cannot be read: {reason}") from None


def is_protein_model(model: str, model_cache: str | None = None) -> bool:
    """ESM models read protein; every other Hugging Face model here reads nucleotides."""
    if not is_hf_model(model):
        return True
    return model_config(model_folder(model, model_cache)).get("model_type") == "esm"


def remote_code(config: dict) -> str | None:
    """The model's own code that transformers would run (config.json's auto_map), if any."""
    auto_map = config.get("auto_map") or {}
    return auto_map.get("AutoModel") or auto_map.get("AutoModelForMaskedLM")


def offline() -> None:
    """Never reach the network from a job, whatever the environment says."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
