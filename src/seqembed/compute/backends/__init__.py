"""Model backends. A backend knows its alphabet, turns sequences into a token batch and returns
per-sequence mean-pooled representations; everything else in seqembed is model-agnostic, so a
DNA model (DNABERT-S) plugs in beside ESM-2 without touching batching, devices or outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


class ModelError(Exception):
    """The model cannot be found or loaded; one line, naming the model."""


class Backend(Protocol):
    name: str
    alphabet: frozenset[str]
    num_layers: int
    embed_dim: int
    attention_heads: int
    dtype: torch.dtype
    #: tokens a sequence costs beyond its residues (BOS/EOS)
    extra_tokens: int

    def resolve_layers(self, layers: str | int | list[int]) -> list[int]: ...

    def embed(self, sequences: list[str], layers: list[int]) -> dict[int, torch.Tensor]:
        """Mean over residue positions only, float32 on the CPU, shape [len(sequences), dim]."""
        ...


def resolve_precision(precision: str, device: str) -> str:
    """auto: bf16 on a GPU (half the memory and the tensor cores, and fp32's range, so no
    overflow in long sequences; the backend falls back to fp16 on GPUs older than Ampere),
    fp32 on the CPU, where half precision is slow and buys nothing. An explicit choice is
    honoured."""
    if precision == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    return precision


def backend_class(model: str) -> type:
    """Which backend serves `model`; only ESM-2 today, DNABERT-S is next."""
    from seqembed.compute.backends.esm import EsmBackend

    return EsmBackend


def load_backend(
    model: str, *, device: str, precision: str, truncation: int, model_cache: str | None = None
) -> Backend:
    return backend_class(model).load(
        model,
        device=device,
        precision=precision,
        truncation=truncation,
        model_cache=model_cache,
    )
