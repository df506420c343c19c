"""Why a file fails, as failed_files.txt names it, and what each reason means for the run.

Every failure seqembed foresees is one of these exceptions. Each carries three things:
- its error type, the word in failed_files.txt;
- whether it counts towards the systemic abort: runtime failures say something about the
  model, the driver, the node or the disk; a bad input file says nothing about them;
- whether a retry would fail the same way (deterministic), so that the retry repeats the
  verdict instead of loading the model and computing again.

Torch-free: the job, which never imports torch, classifies what its worker reports.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass


class SeqembedError(Exception):
    error_type = "Error"
    counts_towards_abort = True
    deterministic = False


class InputError(SeqembedError):
    """A problem with an input file; the message names the file and, where known, the line."""

    error_type = "InputError"
    counts_towards_abort = False
    deterministic = True


class ModelError(SeqembedError):
    """The model cannot be found or built; one line, naming the model. The same everywhere."""

    error_type = "ModelError"
    deterministic = True


class ReadError(SeqembedError):
    """Reading the model's files failed with an OS error (a shared disk hiccup): the
    pre-flight had read them, so another attempt may well succeed."""

    error_type = "IOError"


class SequenceTooLarge(SeqembedError):
    """Out of memory with a batch of one sequence: the file cannot be done on this device."""

    error_type = "OOM"
    deterministic = True


class OutOfMemory(SeqembedError):
    """Out of memory outside the batch loop (moving the model to a busy GPU): another device
    or a later attempt may do."""

    error_type = "OOM"


class DeviceError(SeqembedError):
    """No usable device: none visible, none free, a bad label, or a device left unusable by a
    CUDA error; retried on another device."""

    error_type = "DeviceError"


class OutputError(SeqembedError):
    """An output, a record or the run state cannot be written (disk full, folder turned
    read-only): neither the model's fault nor the input's, but it repeats for every file."""

    error_type = "OutputError"


class OutputTooLarge(SeqembedError):
    """Per-residue output too large to build in memory for a .pt file; h5 streams it."""

    error_type = "OutputTooLarge"
    counts_towards_abort = False
    deterministic = True


class Crash(SeqembedError):
    """The attempt ended without a result: the job or its worker was killed, segfaulted, or
    its node was lost."""

    error_type = "Crash"


class Aborted(SeqembedError):
    """The run was aborted by earlier failures; this file was not done."""

    error_type = "Aborted"
    counts_towards_abort = False
    deterministic = True


@dataclass(frozen=True)
class Verdict:
    error_type: str
    counts_towards_abort: bool
    deterministic: bool
    message: str  # one line

    def as_dict(self) -> dict:
        return {
            "error_type": self.error_type,
            "counts_towards_abort": self.counts_towards_abort,
            "deterministic": self.deterministic,
            "error_message": self.message,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Verdict:
        """The verdict in a record or a worker's answer (as_dict's fields)."""
        return cls(
            data["error_type"],
            bool(data.get("counts_towards_abort", True)),
            bool(data.get("deterministic")),
            data["error_message"],
        )


def failure_line(file: str, error_type: str, message: str, shard: str | None = None) -> str:
    """The one line a failure prints, `seqembed: <type>: <file>: [shard <k-of-n>: ]<message>`,
    the file left out where the message names it already."""
    where = "" if file in message else f"{file}: "
    if shard:
        where = f"{where}shard {shard}: "
    return f"seqembed: {error_type}: {where}{message}"


class Failed(SeqembedError):
    """A verdict reached elsewhere (the worker), raised again where the failure is recorded."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def classify(error: BaseException) -> Verdict:
    if isinstance(error, Failed):
        return error.verdict
    if isinstance(error, SeqembedError):
        return Verdict(
            error.error_type, error.counts_towards_abort, error.deterministic, one_line(error)
        )
    # a bug, a failing GPU or an unforeseen library error: keep the traceback for whoever
    # debugs it, and let the retry try another device
    traceback.print_exc()
    return Verdict("Error", True, False, f"{type(error).__name__}: {one_line(error)}")
