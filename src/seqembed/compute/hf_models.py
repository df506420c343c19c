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

from seqembed.errors import ModelError, ReadError

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
    except OSError as error:
        if not isinstance(error, LocalEntryNotFoundError) and error.errno:
            # a shared cache that failed to answer once (permissions, a dropped mount)
            raise ReadError(f"cannot read the Hugging Face cache {cache}: {error}") from None
        raise ModelError(
            f"model {model} is not in the Hugging Face cache {cache}, and jobs never download: "
            f"fill it where there is internet with `hf download {model}` (HF_HUB_CACHE={cache}), "
            "or set model to a local model folder"
        ) from None
    except ValueError:
        raise ModelError(f"model {model}: not a hub id the Hugging Face cache can hold") from None


def model_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path} is missing: not a Hugging Face model folder") from None
    except OSError as error:
        raise ReadError(f"cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise ModelError(f"{path} is not valid JSON: {error}") from None


#: amino acids a nucleotide vocabulary never holds as tokens of their own
PROTEIN_ONLY_LETTERS = frozenset("LWKEFQ")


def vocabulary(folder: Path) -> set[str]:
    """The tokenizer's tokens, from vocab.txt or tokenizer.json (empty if neither reads)."""
    try:
        if (folder / "vocab.txt").is_file():
            return set((folder / "vocab.txt").read_text().split())
        if (folder / "tokenizer.json").is_file():
            return set(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return set()


#: a vocabulary of letters and a few special tokens (ESM-2: 33, ESM C: 33), not of byte pairs
LETTER_VOCABULARY = 128


def is_protein_folder(folder: Path, config: dict) -> bool:
    """A protein model read one token per residue (ESM-2, ESM C): the tokens are amino acids,
    each a token of its own, and few. Nucleotide models hold k-mers or byte pairs of ACGTN
    (InstaDeep's Nucleotide Transformers are model type esm too); a protein model of byte
    pairs (ProtGPT2's kind) is not read residue by residue, so it does not count."""
    tokens = vocabulary(folder)
    return PROTEIN_ONLY_LETTERS <= tokens and len(tokens) <= LETTER_VOCABULARY


def is_protein_model(model: str, model_cache: str | None = None) -> bool:
    """fair-esm's models and ESM-2 folders read protein; other Hugging Face models here read
    nucleotides."""
    if not is_hf_model(model):
        return True
    folder = model_folder(model, model_cache)
    return is_protein_folder(folder, model_config(folder))


def remote_code(config: dict) -> str | None:
    """The model's own code that transformers would run (config.json's auto_map), if any."""
    auto_map = config.get("auto_map") or {}
    return auto_map.get("AutoModel") or auto_map.get("AutoModelForMaskedLM")


def code_files(config: dict) -> list[str]:
    """The files of the model's own code in its folder: `module.Class` names module.py, and
    `owner/repo--module.Class` (a model derived from another's code) the same module."""
    auto_map = config.get("auto_map") or {}
    references = [value for value in auto_map.values() if isinstance(value, str)]
    return sorted({f"{ref.split('--')[-1].rsplit('.', 1)[0]}.py" for ref in references})


def offline() -> None:
    """Never reach the network from a job, whatever the environment says."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
