"""Fault injection for tests, so the real recovery code runs on a machine without a GPU.

Switched on only by the environment variable SEQEMBED_TEST_FAULTS (JSON), which nothing but
the test suite sets; Snakemake passes the environment on to its local jobs. Keys:

- "oom_above_tokens": N - a batch of more than N padded tokens raises torch.OutOfMemoryError
  exactly where a CUDA allocation would, before the forward pass;
- "pause_before_rename": {"name": NAME, "attempt": K} - the job for NAME, on attempt K,
  writes its temporary output and then sleeps, so a test can kill it mid-write;
- "seconds_per_batch": S - every batch takes S seconds longer, as on a slow device, so a
  test sees jobs halfway through their files;
- "gpu_computes_on_cpu": true - a job that claimed a GPU (granted by a real SLURM test
  cluster with fake GPUs) computes on the CPU: everything up to the CUDA context is real.
"""

from __future__ import annotations

import json
import os
import time

VARIABLE = "SEQEMBED_TEST_FAULTS"


def _faults() -> dict:
    text = os.environ.get(VARIABLE)
    return json.loads(text) if text else {}


def oom_limit() -> int | None:
    return _faults().get("oom_above_tokens")


def maybe_raise_oom(computed_tokens: int) -> None:
    limit = oom_limit()
    if limit is not None and computed_tokens > limit:
        import torch

        raise torch.OutOfMemoryError(
            f"injected by {VARIABLE}: {computed_tokens} tokens > {limit} (CUDA out of memory)"
        )


def maybe_pause_before_rename(name: str, attempt: int) -> None:
    pause = _faults().get("pause_before_rename")
    if pause and pause.get("name") == name and pause.get("attempt", 1) == attempt:
        time.sleep(3600)


def maybe_slow_batch() -> None:
    seconds = _faults().get("seconds_per_batch")
    if seconds:
        time.sleep(seconds)


def gpu_computes_on_cpu() -> bool:
    return bool(_faults().get("gpu_computes_on_cpu"))
