"""How a batch's failure is told apart: out of memory (the loop backs off), a device left
unusable (the worker ends and the file goes to another device), or anything else."""

from __future__ import annotations

from seqembed.errors import DeviceError

#: words of the errors a CUDA device raises when it is left unusable
DEVICE_FAILURE_WORDS = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error")


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, and the plain RuntimeErrors some CUDA paths raise instead
    ("CUDA out of memory", cuBLAS failing to allocate its workspace)."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text.lower() or "ALLOC_FAILED" in text
    )


def device_failure(error: BaseException) -> DeviceError | None:
    """A CUDA error other than out-of-memory leaves the device (and the process's context on
    it) unusable: the worker must end and the file go to another device."""
    import torch

    accelerator_error = getattr(torch, "AcceleratorError", ())
    text = " ".join(str(error).split())
    if isinstance(error, accelerator_error) or (
        isinstance(error, RuntimeError) and any(word in text for word in DEVICE_FAILURE_WORDS)
    ):
        return DeviceError(f"device failed: {text[:300]}")
    return None


def free_memory(device) -> None:
    """What a batch that ran out of memory left: collected, and the cache emptied."""
    import gc

    import torch

    gc.collect()
    if getattr(device, "type", None) == "cuda":
        torch.cuda.empty_cache()
