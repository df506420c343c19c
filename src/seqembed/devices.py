"""Which devices a job may use: the pool (configured GPUs, CUDA_VISIBLE_DEVICES, a SLURM
grant, or CPU slots), device labels and what they mean for CUDA, and the lane a device is
in reports. How a job claims one of them is seqembed.claims.

Inside a SLURM job the GPUs SLURM granted (its CUDA_VISIBLE_DEVICES) are the pool, whatever
``gpus`` says.

Pool discovery never imports torch: the plan rule runs inside the Snakemake process,
and initialising CUDA there would put a stray context on GPU 0.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from seqembed.errors import DeviceError

__all__ = ["DeviceError"]


def _parse_cvd(value: str) -> list[str]:
    ids: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        # CUDA stops at the first invalid entry ("-1" by convention); SGE/Torque write
        # "NoDevFiles" for "no GPUs".
        if entry == "NoDevFiles" or entry.startswith("-"):
            break
        ids.append(entry)
    return list(dict.fromkeys(ids))


def _nvidia_smi_count(environ: Mapping[str, str]) -> int:
    exe = shutil.which("nvidia-smi", path=environ.get("PATH", os.defpath))
    if exe is None:
        return 0
    try:
        out = subprocess.run(
            [exe, "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    # MIG instances are listed as indented lines under their GPU; count GPUs only.
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


#: set by SLURM in a job that was granted GPUs (batch script, srun step)
SLURM_GPU_GRANT = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "GPU_DEVICE_ORDINAL")


def slurm_job(environ: Mapping[str, str] = os.environ) -> str | None:
    """The SLURM job id when running inside an allocation."""
    return environ.get("SLURM_JOB_ID") or None


def gpu_pool(
    configured: list | None, environ: Mapping[str, str] = os.environ, proc_root: str = "/proc"
) -> list[str]:
    """GPU ids (as strings) this process may use; [] when there are none. Inside a SLURM job
    only what SLURM granted: other GPUs of the node belong to other jobs."""
    if slurm_job(environ):
        if not any(environ.get(name) for name in SLURM_GPU_GRANT):
            return []
        return _parse_cvd(environ.get("CUDA_VISIBLE_DEVICES", ""))
    if configured:
        return list(dict.fromkeys(s for s in (str(g).strip() for g in configured) if s))
    if "CUDA_VISIBLE_DEVICES" in environ:
        return _parse_cvd(environ["CUDA_VISIBLE_DEVICES"])
    gpus_dir = Path(proc_root, "driver", "nvidia", "gpus")
    if gpus_dir.is_dir():
        n = sum(1 for p in gpus_dir.iterdir() if p.is_dir())
        if n:
            return [str(i) for i in range(n)]
    return [str(i) for i in range(_nvidia_smi_count(environ))]


def resolve_pool(
    device: str,
    gpus: list | None,
    cpu_slots: int,
    environ: Mapping[str, str] = os.environ,
    proc_root: str = "/proc",
) -> list[str]:
    """Device labels ("cuda:<id>" or "cpu:<n>") that jobs may claim."""
    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"device must be auto, cpu or cuda, not {device!r}")
    cuda = [] if device == "cpu" else [f"cuda:{g}" for g in gpu_pool(gpus, environ, proc_root)]
    if cuda:
        return cuda
    if device == "cuda" and slurm_job(environ):
        raise DeviceError(
            f"device: cuda was requested but SLURM job {slurm_job(environ)} was granted no GPU "
            "(the embed rule asks for one with resources gpu=1; check the profile)"
        )
    if device == "cuda":
        cvd = environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
        raise DeviceError(
            "device: cuda was requested but no GPU is visible "
            f"(CUDA_VISIBLE_DEVICES={cvd!r}, gpus={gpus!r})"
        )
    if cpu_slots < 1:
        raise DeviceError(f"cpu_slots must be at least 1, not {cpu_slots}")
    return [f"cpu:{i}" for i in range(cpu_slots)]


def _split(label: str) -> tuple[str, str]:
    kind, sep, ident = label.partition(":")
    if not sep or not ident or kind not in ("cuda", "cpu"):
        raise DeviceError(f"not a device label: {label!r} (expected cuda:<id> or cpu:<n>)")
    return kind, ident


def cuda_env_for(label: str) -> dict[str, str]:
    """Environment that restricts a job to its claimed GPU; set it before CUDA starts."""
    kind, ident = _split(label)
    if kind == "cpu":
        return {}
    # PCI_BUS_ID: make CUDA number GPUs like nvidia-smi and /proc do.
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ident}


def lane_for(label: str, environ: Mapping[str, str] = os.environ) -> str:
    """Which physical device a claimed label is, for the view, the summary and the timeline:
    the label itself on this host. Inside SLURM the node and the GPU as SLURM numbers it
    (with device cgroups every job sees its own GPU as cuda:0), else the allocation."""
    job = slurm_job(environ)
    if not job:
        return label
    host = socket.gethostname()
    kind, ident = _split(label)
    if kind == "cuda":
        visible = _parse_cvd(environ.get("CUDA_VISIBLE_DEVICES", ""))
        granted = environ.get("SLURM_STEP_GPUS") or environ.get("SLURM_JOB_GPUS") or ""
        physical = [gpu.strip() for gpu in granted.split(",") if gpu.strip()]
        if ident in visible and len(physical) == len(visible):
            return f"{host}/cuda:{physical[visible.index(ident)]}"
    return f"{host}/slurm-{job}/{label}"


def lane_of(record: dict) -> str:
    """The lane of a record or progress entry (jobs before lanes existed: their device)."""
    return record.get("lane") or record["device"]


def torch_device_for(label: str) -> str:
    """The torch device string once cuda_env_for(label) is in effect."""
    kind, _ = _split(label)
    return "cuda:0" if kind == "cuda" else "cpu"


def slots_warning(gpu_slots: int | None, cores: int | None, pool: Sequence[str]) -> str | None:
    """A warning when Snakemake may run more embed jobs at once than there are devices:
    the extra jobs wait for a free device, each holding a Snakemake job slot and its parsed
    input, so nothing runs faster and memory fills. None when the numbers fit."""
    devices = len(pool)
    if gpu_slots is None:
        if cores and cores > devices:
            return (
                f"no --resources gpu=N given: Snakemake may start up to {cores} embed jobs "
                f"at once for {devices} device(s); the extra ones wait. Add --resources "
                f"gpu={devices}"
            )
        return None
    if gpu_slots > devices:
        return (
            f"--resources gpu={gpu_slots} but {devices} device(s) to use ({', '.join(pool)}): "
            f"{gpu_slots - devices} job(s) at a time will wait for a free device; use "
            f"--resources gpu={devices}"
        )
    return None
