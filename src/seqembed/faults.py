"""Fault injection for tests, so the real recovery code runs on a machine without a GPU.

Switched on only by the environment variable SEQEMBED_TEST_FAULTS (JSON), which nothing but
the test suite sets; Snakemake passes the environment on to its local jobs, and a worker
inherits it from the job that started it. Faults are never taken from a request: whoever can
talk to a worker must not be able to switch them on (README, "Shared machines"). The worker
tells `use` which file and attempt it serves, for the per-file keys. Keys:

- "oom_above_tokens": N - a batch of more than N padded tokens raises torch.OutOfMemoryError
  exactly where a CUDA allocation would, before the forward pass;
- "oom_as_runtime_error": true - ... raised as the plain RuntimeError("CUDA out of memory")
  that some CUDA code paths raise instead;
- "device_error": {"attempt": K} - the first batch (of attempt K) raises the RuntimeError of
  a CUDA device that is left unusable ("CUDA error: an illegal memory access was
  encountered");
- "model_read_error": {"name": NAME, "attempt": K} - when the job for NAME loads the model
  on attempt K, reading the checkpoint fails with an OS error (EIO), as on a shared disk that
  hiccups (the pre-flight, which reads it too, is spared);
- "pause_before_rename": {"name": NAME, "attempts": [K, ...]} - the job for NAME, on the
  attempts listed, has its temporary output written and then sleeps, so a test can kill it
  mid-write;
- "seconds_per_batch": S - every batch takes S seconds longer, as on a slow device, so a
  test sees jobs halfway through their files;
- "gpu_computes_on_cpu": true - a job that claimed a GPU (granted by a real SLURM test
  cluster with fake GPUs) computes on the CPU: everything up to the CUDA context is real;
- "pt_limit_bytes": N - per-residue output a .pt file may hold is N bytes instead of 4 GiB,
  so a test sees the refusal without gigabytes;
- "files": {NAME: {...}} - the keys above for the file NAME only, over the general ones.
"""

from __future__ import annotations

import errno
import json
import os
import time

VARIABLE = "SEQEMBED_TEST_FAULTS"
#: set by a worker for the job it serves: that job's faults, name and attempt
_context: dict = {}


def text() -> str | None:
    """This process's faults, as the job hands them on."""
    return _context["text"] if _context else os.environ.get(VARIABLE)


def use(faults_text: str | None, name: str | None = None, attempt: int | None = None) -> None:
    _context.update(text=faults_text or "", name=name, attempt=attempt)


def serve(name: str | None, attempt: int | None) -> None:
    """This process computes `name` (attempt `attempt`), with its own environment's faults."""
    use(os.environ.get(VARIABLE), name, attempt)


def _faults(name: str | None = None) -> dict:
    raw = text()
    faults = json.loads(raw) if raw else {}
    return {**faults, **faults.get("files", {}).get(name, {})} if name else faults


def maybe_raise_oom(computed_tokens: int, name: str | None = None) -> None:
    faults = _faults(name)
    limit = faults.get("oom_above_tokens")
    if limit is None or computed_tokens <= limit:
        return
    message = f"injected by {VARIABLE}: {computed_tokens} tokens > {limit} (CUDA out of memory)"
    if faults.get("oom_as_runtime_error"):
        raise RuntimeError(f"CUDA out of memory. Tried to allocate 2.00 GiB ({message})")
    import torch

    raise torch.OutOfMemoryError(message)


def maybe_raise_device_error(name: str | None = None) -> None:
    fault = _faults(name).get("device_error")
    if fault and fault.get("attempt", 1) == _context.get("attempt", 1):
        raise RuntimeError(
            f"CUDA error: an illegal memory access was encountered (injected by {VARIABLE})"
        )


def maybe_fail_model_read(path) -> None:
    fault = _faults().get("model_read_error")
    if fault and (fault.get("name"), fault.get("attempt", 1)) == (
        _context.get("name"),
        _context.get("attempt"),
    ):
        raise OSError(errno.EIO, f"Input/output error (injected by {VARIABLE})", str(path))


def maybe_pause_before_rename(name: str, attempt: int) -> None:
    pause = _faults(name).get("pause_before_rename")
    if pause and pause.get("name") == name and attempt in pause.get("attempts", [1]):
        time.sleep(3600)


def maybe_slow_batch(name: str | None = None) -> None:
    seconds = _faults(name).get("seconds_per_batch")
    if seconds:
        time.sleep(seconds)


def gpu_computes_on_cpu() -> bool:
    return bool(_faults().get("gpu_computes_on_cpu"))


def pt_limit(default: int, name: str | None = None) -> int:
    return int(_faults(name).get("pt_limit_bytes", default))
