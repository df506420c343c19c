"""Model backends. A backend knows its alphabet, turns sequences into a token batch and returns
per-sequence mean-pooled representations; everything else in seqembed is model-agnostic, so a
DNA model (DNABERT-S) plugs in beside ESM-2 without touching batching, devices or outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from seqembed.errors import ModelError

if TYPE_CHECKING:
    import torch

__all__ = ["ModelError", "PROTEIN_ALPHABET", "alphabet_for", "resolve_layers"]

# fair-esm's ESM-1b/ESM-2 alphabet without the gap symbols '.' and '-': an aligned FASTA is
# not what these models were trained on, so it is reported instead of silently embedded.
PROTEIN_ALPHABET = frozenset("ACDEFGHIKLMNPQRSTVWYXBUZO")


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

    def prepare(self, sequences: list[str]):
        """The batch's model input, built on the CPU (pinned for a fast copy to a GPU): run in
        a second thread while the device computes the batch before."""
        ...

    def forward(self, prepared, layers: list[int]) -> dict[int, torch.Tensor]:
        """Mean over residue positions only, float32 on the device, [len(sequences), dim]."""
        ...

    def embed(self, sequences: list[str], layers: list[int]) -> dict[int, torch.Tensor]:
        """prepare and forward in one, the result on the CPU."""
        ...


def alphabet_for(model: str) -> frozenset[str]:
    """The letters the model for `model` accepts, known without importing torch: the job
    checks its input with it before any model work."""
    return PROTEIN_ALPHABET


def resolve_layers(layers, num_layers: int, model: str) -> list[int]:
    """'last', one number or a list; negative numbers count from the end as in fair-esm's
    extract script (-1 is the last layer); 0 is the embedding layer."""
    if layers == "last":
        return [num_layers]
    requested = layers if isinstance(layers, list) else [layers]
    resolved = []
    for layer in requested:
        if not -(num_layers + 1) <= layer <= num_layers:
            raise ModelError(f"layer {layer} does not exist: {model} has layers 0..{num_layers}")
        resolved.append(layer % (num_layers + 1))
    return sorted(set(resolved))


def resolve_precision(precision: str, device: str) -> str:
    """auto: bf16 on a GPU (half the memory and the tensor cores, and fp32's range, so no
    overflow in long sequences; the backend falls back to fp16 on GPUs older than Ampere),
    fp32 on the CPU, where half precision is slow and buys nothing. An explicit choice is
    honoured."""
    if precision == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    return precision


def backend_class(model: str) -> type:
    """Which backend serves `model`; only ESM-2 today, DNABERT-S is next. Imports torch."""
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
