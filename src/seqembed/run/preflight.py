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
from seqembed.run.preflight_hf import PreflightError, check_hf_model

__all__ = ["PreflightError", "check_hf_model", "check_model", "run_preflight"]


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
