"""Pre-flight: the checks that must pass before any file is touched, run when a run starts,
in a child process of Snakemake's (so the Snakemake process never imports torch or creates a
CUDA context). Under a cluster executor the devices are the nodes' and only the jobs can
check them; the model is checked here. Each failure is one line saying what is wrong and
what to change."""

from __future__ import annotations

import os
import re
from pathlib import Path

from seqembed.compute.models import (
    FetchError,
    cached_checkpoint,
    fetch,
    is_cached,
    is_checkpoint_path,
)
from seqembed.devices import DeviceError, resolve_pool, slurm_job
from seqembed.lock_folder import check_locking, unavailable_devices


class PreflightError(Exception):
    pass


def check_devices(config: dict, environ=os.environ) -> list[str]:
    """The pool the jobs will claim from, every GPU in it present and usable by torch."""
    try:
        pool = resolve_pool(config["device"], config["gpus"], config["cpu_slots"], environ)
    except DeviceError as error:
        raise PreflightError(str(error)) from None
    gpus = [label.split(":", 1)[1] for label in pool if label.startswith("cuda:")]
    if not gpus:
        return pool
    # inside a SLURM allocation the granted GPUs are the pool and `gpus` does not apply
    configured = None if slurm_job(environ) else config["gpus"]
    if configured:
        # configured ids are physical ids, as nvidia-smi numbers them, whatever
        # CUDA_VISIBLE_DEVICES says: the jobs set it to their claimed GPU themselves
        environ.pop("CUDA_VISIBLE_DEVICES", None)
    environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    import torch

    if not torch.cuda.is_available():
        raise PreflightError(
            f"device {config['device']}: GPUs {', '.join(gpus)} are listed but torch cannot use "
            "CUDA here (no driver, or a CPU-only torch build); use device: cpu to run on the CPU"
        )
    count = torch.cuda.device_count()
    uuids = {str(torch.cuda.get_device_properties(i).uuid) for i in range(count)}
    for gpu in gpus:
        exists = int(gpu) < count if gpu.isdigit() else re.sub(r"^(GPU|MIG)-", "", gpu) in uuids
        if not exists and configured:
            raise PreflightError(
                f"gpus entry {gpu} does not exist: this node has {count} GPU(s), 0-{count - 1}"
            )
    if not configured and count < len(gpus):
        raise PreflightError(
            f"CUDA_VISIBLE_DEVICES lists {len(gpus)} GPUs but torch sees only {count}"
        )
    return pool


def _checkpoint_problem(path: Path, layers, unreadable_hint: str = "") -> str | None:
    """Read the checkpoint's structure the way the jobs will, without materializing its
    tensors, so a 15B model is checked in seconds on any node; and the requested layers
    against its depth, before any job loads it. `unreadable_hint` follows a problem with the
    file itself (not with the layers)."""
    from seqembed.compute.backends import ModelError, resolve_layers
    from seqembed.compute.backends.esm import read_checkpoint

    try:
        data = read_checkpoint(path)
    except Exception as error:  # noqa: BLE001 - any reason means "not loadable"
        summary = " ".join(str(error).split())[:160]
        return (
            f"{path} cannot be read as a torch checkpoint ({type(error).__name__}: {summary})"
            + unreadable_hint
        )
    if not isinstance(data, dict) or "model" not in data or not ({"cfg", "args"} & set(data)):
        return (
            f"{path} is not a fair-esm checkpoint (no 'model' and 'cfg' entries)" + unreadable_hint
        )
    depth = _depth(data)
    if depth is not None:
        try:
            resolve_layers(layers, depth, path.stem)
        except ModelError as error:
            return f"config key 'layers': {error}"
    return None


def _depth(data: dict) -> int | None:
    """Transformer layers of a fair-esm checkpoint: ESM-2 keeps them in cfg, older models in
    args."""
    if "cfg" in data:
        return getattr(data["cfg"].get("model"), "encoder_layers", None)
    return getattr(data.get("args"), "layers", None)


def check_model(
    model: str, model_cache: str | None = None, mirror: str | None = None, layers="last"
) -> str:
    """A local checkpoint that fair-esm can read, or a known hub name whose weights are in
    the model cache: fetched there now if missing, once, on the host that runs Snakemake, so
    that jobs on nodes without internet find them. Returns the checkpoint's path."""
    if is_checkpoint_path(model):
        path = Path(model).expanduser()
        if not path.is_file():
            raise PreflightError(f"model checkpoint not found: {model}")
        if not path.stem.startswith("esm"):
            raise PreflightError(
                f"model file {path.name}: the name must keep fair-esm's model name (esm2_...): "
                "fair-esm picks the architecture from it"
            )
        problem = _checkpoint_problem(path, layers)
        if problem:
            raise PreflightError(problem)
        return str(path)
    import esm

    if not model.startswith("esm") or not hasattr(esm.pretrained, model):
        raise PreflightError(
            f"unknown model '{model}': not a file and not a fair-esm hub name "
            "(e.g. esm2_t33_650M_UR50D)"
        )
    cached = cached_checkpoint(model, model_cache)
    if not is_cached(model, model_cache):
        try:
            fetch(model, model_cache, mirror)
        except FetchError as error:
            raise PreflightError(str(error)) from None
    problem = _checkpoint_problem(cached, layers, "; delete it to fetch it again")
    if problem:
        raise PreflightError(problem)
    return str(cached)


#: the files a Hugging Face model folder holds its weights in, one of them at least
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
    if not is_protein_folder(folder, settings) and "per_tok" in config["include"]:
        raise PreflightError(
            f"config key 'include': per_tok is written for protein models; {model} is a "
            "nucleotide model (mean and bos are)"
        )
    check_model_builds(model, folder, bool(own_code), layers)
    return str(folder)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ""


def check_model_builds(model: str, folder: Path, own_code: bool, layers: list[int]) -> None:
    """The network built from its config as the workers will build it, without its weights:
    a model whose code cannot be built (code made for another transformers) stops the run
    here, once, instead of failing every file. transformers' own classes are built on the meta
    device, as the workers' loading builds them; a model's own code on the CPU
    (seqembed.compute.backends.own_code), which costs its size in memory for a moment, and is
    run once on two short sequences when layers other than the last are asked for, to see
    that its code keeps them one row per token (DNABERT-2's does not)."""
    import torch

    from seqembed.compute.backends.layer_taps import check_layers_readable, find_blocks
    from seqembed.compute.backends.own_code import build_without_weights
    from seqembed.compute.hf_models import offline
    from seqembed.errors import ModelError

    offline()
    try:
        if own_code:
            network = build_without_weights(folder)
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


def check_lock_files(pool: list[str], lock_dir) -> list[str]:
    """The devices whose lock file this user cannot use (another user's file it cannot open,
    a planted link): one warning line each, said once here rather than by every job; the
    files go to the other devices. None left: the run stops."""
    problem = check_locking(lock_dir)
    if problem:
        raise PreflightError(problem)
    unusable = unavailable_devices(pool, lock_dir)
    if unusable and len(unusable) == len(set(pool)):
        raise PreflightError("no device is usable: " + "; ".join(unusable.values()))
    return list(unusable.values())


def run_preflight(config: dict, devices: bool = True, warn=lambda line: None) -> str:
    """All checks; returns a one-line report of what was checked, and passes each warning to
    `warn`. `devices` False: the jobs run on other hosts (a cluster), whose devices only they
    can see and check."""
    pool = check_devices(config) if devices else ["checked by each job on its node"]
    if devices:
        for warning in check_lock_files(pool, config["lock_dir"]):
            warn(warning)
    from seqembed.compute.hf_models import is_hf_model

    if is_hf_model(config["model"]):
        checkpoint = check_hf_model(config)
    else:
        checkpoint = check_model(
            config["model"], config["model_cache"], config["model_mirror"], config["layers"]
        )
    return f"devices {', '.join(pool)}; model {checkpoint}"


def preflight_in_subprocess(config: dict, devices: bool = True) -> str | None:
    """Run the checks in a child process (no CUDA context, no torch import in the Snakemake
    process) and return the one-line failure, or None when they pass."""
    import json
    import subprocess
    import sys

    model = config["model"]
    if not is_checkpoint_path(model) and not is_cached(model, config["model_cache"]):
        # a large download ahead (the 15B model is 60 GB): say what the wait is for
        folder = cached_checkpoint(model, config["model_cache"]).parent
        print(f"seqembed: fetching {model} into {folder}", file=sys.stderr, flush=True)
    environ = dict(os.environ)
    source = str(Path(__file__).resolve().parent.parent)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [source, environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "seqembed.run.preflight"],
        input=json.dumps({"config": config, "devices": devices}),
        capture_output=True,
        text=True,
        env=environ,
    )
    for line in result.stdout.splitlines():
        if line.startswith("warning: "):
            print(f"seqembed: {line}", file=sys.stderr, flush=True)
    if result.returncode == 0:
        return None
    if "No module named 'torch'" in result.stderr or "No module named 'esm'" in result.stderr:
        # Snakemake's own environment without torch (jobs in --sdm conda environments):
        # the jobs still check everything themselves, one file at a time
        print(
            "seqembed: pre-flight skipped: torch is not installed beside Snakemake", file=sys.stderr
        )
        return None
    lines = [line for line in result.stdout.splitlines() if not line.startswith("warning: ")]
    lines = lines or result.stderr.strip().splitlines() or ["?"]
    return lines[-1]


def main() -> None:
    import json
    import sys

    request = json.loads(sys.stdin.read())
    try:
        report = run_preflight(
            request["config"],
            request["devices"],
            lambda line: print(f"warning: {' '.join(line.split())}", flush=True),
        )
    except PreflightError as failure:
        print(" ".join(str(failure).split()))
        raise SystemExit(1) from None
    print(f"pre-flight ok: {report}", file=sys.stderr)


if __name__ == "__main__":
    main()
