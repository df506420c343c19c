"""Where model weights come from: a local checkpoint path, or a fair-esm hub name whose
weights are fetched once, on the host that runs Snakemake, into a model cache that the jobs
read. Compute nodes often have no internet, so jobs never download.

Torch-free, so that Snakemake's process can tell what a fetch will do before it starts.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from seqembed.output import write_atomically

#: fair-esm's own download address; `model_mirror` replaces it (an institute mirror, a
#: file:// folder on a shared disk)
HUB_URL = "https://dl.fbaipublicfiles.com/fair-esm"


class FetchError(Exception):
    """The weights cannot be fetched; one line, naming the model and the address."""


def is_checkpoint_path(model: str) -> bool:
    """A path to a .pt file (existing or not) rather than a hub name."""
    return model.endswith(".pt") or os.sep in model or Path(model).expanduser().exists()


def cache_dir(model_cache: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """`model_cache`, or where torch's hub keeps checkpoints (torch.hub.get_dir() without
    importing torch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else ~/.cache/...)."""
    if model_cache:
        return Path(model_cache).expanduser()
    if environ.get("TORCH_HOME"):
        torch_home = Path(environ["TORCH_HOME"]).expanduser()
    else:
        cache = environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        torch_home = Path(cache).expanduser() / "torch"
    return torch_home / "hub" / "checkpoints"


def cached_checkpoint(model: str, model_cache: str | None) -> Path:
    return cache_dir(model_cache) / f"{model}.pt"


def hub_files(model: str, mirror: str | None = None) -> dict[str, str]:
    """file name -> address, as fair-esm's hub loader fetches them. ESM-2 needs only the
    weights (seqembed never uses the contact head); fair-esm's loader for older models wants
    the contact regression beside them."""
    base = (mirror or HUB_URL).rstrip("/")
    files = {f"{model}.pt": f"{base}/models/{model}.pt"}
    if not model.startswith("esm2") and "esm1v" not in model:
        files[f"{model}-contact-regression.pt"] = f"{base}/regression/{model}-contact-regression.pt"
    return files


def is_cached(model: str, model_cache: str | None) -> bool:
    """Every file the loader needs for hub model `model` is in the cache."""
    folder = cache_dir(model_cache)
    return all((folder / name).is_file() for name in hub_files(model))


def fetch(model: str, model_cache: str | None, mirror: str | None = None) -> Path:
    """Download what is missing of `model` into the cache; returns the checkpoint's path.
    Written under a temporary name and renamed, so an interrupted download is never taken
    for weights."""
    folder = cache_dir(model_cache)
    for name, url in hub_files(model, mirror).items():
        target = folder / name
        if target.is_file():
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(url, timeout=60) as response:
                write_atomically(target, lambda stream: shutil.copyfileobj(response, stream))
        except (OSError, ValueError) as error:
            reason = " ".join(str(getattr(error, "reason", error)).split())
            raise FetchError(
                f"model {model}: cannot download {url} into {folder} ({reason}); download it "
                f"there by hand, set model_mirror, or set model to a local checkpoint path"
            ) from None
    return folder / f"{model}.pt"
