"""Pre-flight: the checks that must pass before any file is touched, run as the first job
of a run (so under SLURM it runs on a GPU node, and the Snakemake process never creates a
CUDA context). Each failure is one line saying what is wrong and what to change."""

from __future__ import annotations

import os
import re
from pathlib import Path

from seqembed.devices import DeviceError, resolve_pool

HUB_URL = "https://dl.fbaipublicfiles.com/fair-esm"


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
    if config["gpus"]:
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
        if not exists and config["gpus"]:
            raise PreflightError(
                f"gpus entry {gpu} does not exist: this node has {count} GPU(s), 0-{count - 1}"
            )
    if not config["gpus"] and count < len(gpus):
        raise PreflightError(
            f"CUDA_VISIBLE_DEVICES lists {len(gpus)} GPUs but torch sees only {count}"
        )
    return pool


def _checkpoint_problem(path: Path) -> str | None:
    """Read the checkpoint's structure the way the jobs will, without materializing its
    tensors, so a 15B model is checked in seconds on any node."""
    from seqembed.backends.esm import read_checkpoint

    try:
        data = read_checkpoint(path)
    except Exception as error:  # noqa: BLE001 - any reason means "not loadable"
        summary = " ".join(str(error).split())[:160]
        return f"{path} cannot be read as a torch checkpoint ({type(error).__name__}: {summary})"
    if not isinstance(data, dict) or "model" not in data or not ({"cfg", "args"} & set(data)):
        return f"{path} is not a fair-esm checkpoint (no 'model' and 'cfg' entries)"
    return None


def check_model(model: str) -> str:
    """A local checkpoint, or a hub name whose weights are in torch's hub cache (fetched
    there now if missing: once, here, instead of once per job). Returns the checkpoint path."""
    import esm
    import torch

    from seqembed.backends.esm import checkpoint_path, hub_checkpoint

    path = checkpoint_path(model)
    if path is not None and path != hub_checkpoint(model):
        if not path.is_file():
            raise PreflightError(f"model checkpoint not found: {model}")
        if not path.stem.startswith("esm"):
            raise PreflightError(
                f"model file {path.name}: the name must keep fair-esm's model name (esm2_...): "
                "fair-esm picks the architecture from it"
            )
        problem = _checkpoint_problem(path)
        if problem:
            raise PreflightError(problem)
        return str(path)
    if not model.startswith("esm") or not hasattr(esm.pretrained, model):
        raise PreflightError(
            f"unknown model '{model}': not a file and not a fair-esm hub name "
            "(e.g. esm2_t33_650M_UR50D)"
        )
    checkpoints = hub_checkpoint(model).parent
    wanted = {f"{model}.pt": f"{HUB_URL}/models/{model}.pt"}
    if "esm1v" not in model:
        wanted[f"{model}-contact-regression.pt"] = (
            f"{HUB_URL}/regression/{model}-contact-regression.pt"
        )
    for name, url in wanted.items():
        target = checkpoints / name
        if target.is_file():
            continue
        checkpoints.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(target), progress=False)
        except Exception as error:  # noqa: BLE001 - offline nodes are the common case
            raise PreflightError(
                f"model {model} is not in {checkpoints} and cannot be downloaded "
                f"({type(error).__name__}); download {url} there or set model to a local path"
            ) from None
    problem = _checkpoint_problem(checkpoints / f"{model}.pt")
    if problem:
        raise PreflightError(problem)
    return str(checkpoints / f"{model}.pt")


def run_preflight(config: dict) -> str:
    """All checks; returns a one-line report of what was checked."""
    pool = check_devices(config)
    checkpoint = check_model(config["model"])
    return f"devices {', '.join(pool)}; model {checkpoint}"


def preflight_in_subprocess(config: dict) -> str | None:
    """Run the checks in a child process (no CUDA context, no torch import in the Snakemake
    process) and return the one-line failure, or None when they pass."""
    import json
    import subprocess
    import sys

    environ = dict(os.environ)
    source = str(Path(__file__).resolve().parent.parent)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [source, environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "seqembed.preflight"],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        env=environ,
    )
    if result.returncode == 0:
        return None
    if "No module named 'torch'" in result.stderr or "No module named 'esm'" in result.stderr:
        # Snakemake's own environment without torch (jobs in --sdm conda environments):
        # the jobs still check everything themselves, one file at a time
        print(
            "seqembed: pre-flight skipped: torch is not installed beside Snakemake", file=sys.stderr
        )
        return None
    lines = result.stdout.strip().splitlines() or result.stderr.strip().splitlines() or ["?"]
    return lines[-1]


def main() -> None:
    import json
    import sys

    config = json.loads(sys.stdin.read())
    try:
        report = run_preflight(config)
    except PreflightError as failure:
        print(" ".join(str(failure).split()))
        raise SystemExit(1) from None
    print(f"pre-flight ok: {report}", file=sys.stderr)


if __name__ == "__main__":
    main()
