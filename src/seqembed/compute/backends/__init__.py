"""Model backends. A backend knows its alphabet, turns sequences into a token batch and returns
per-sequence mean-pooled representations; everything else in seqembed is model-agnostic, so a
DNA model (DNABERT-S) runs beside ESM-2 without touching batching, devices or outputs: fair-esm
checkpoints through EsmBackend, Hugging Face model folders and cached hub ids through
HfBackend."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

from seqembed.compute.hf_models import DNA_ALPHABET, is_hf_model, is_protein_model
from seqembed.errors import ModelError
from seqembed.precision import choose_precision

if TYPE_CHECKING:
    import torch

__all__ = ["DNA_ALPHABET", "ModelError", "PROTEIN_ALPHABET", "alphabet_for", "resolve_layers"]

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

    def token_counts(self, sequences: list[str]) -> list[int]:
        """Tokens the model sees per sequence (special tokens included): what batches cost."""
        ...

    def forward(self, prepared, layers: list[int], include=("mean",)) -> dict:
        """kind (mean, bos, per_tok) -> layer -> values on the device."""
        ...

    def embed(self, sequences: list[str], layers: list[int]) -> dict[int, torch.Tensor]:
        """prepare and forward in one, the result on the CPU."""
        ...


def alphabet_for(model: str, model_cache: str | None = None) -> frozenset[str]:
    """The letters the model for `model` accepts, known without importing torch: the job
    checks its input with it before any model work."""
    return PROTEIN_ALPHABET if is_protein_model(model, model_cache) else DNA_ALPHABET


def select_outputs(representations: dict, layers: list[int], include, pooled_over, longest: int):
    """kind -> layer -> values from each layer's [B, T, D] representations, as fair-esm's
    extraction names the kinds: `mean` over the `pooled_over` positions [B, T] and `bos`
    (position 0), float32 [B, D]; `per_tok`, positions 1..longest in the model's precision
    (rows past a sequence's end are padding; the caller cuts them)."""
    import torch

    results: dict[str, dict] = {}
    if "mean" in include:
        weights = pooled_over.float() / pooled_over.sum(1).clamp(min=1)[:, None]
        results["mean"] = {
            layer: torch.einsum("bt,btd->bd", weights, representations[layer].float())
            for layer in layers
        }
    if "bos" in include:
        results["bos"] = {layer: representations[layer][:, 0].float() for layer in layers}
    if "per_tok" in include:
        results["per_tok"] = {layer: representations[layer][:, 1 : longest + 1] for layer in layers}
    return results


def letter_token_counts(sequences: list[str], truncation: int) -> list[int]:
    """Tokens of ESM's batch per sequence: its residues cut at `truncation`, BOS and EOS."""
    return [min(len(sequence), truncation) + 2 for sequence in sequences]


def letter_pooling_mask(lengths, width: int, pooling: str):
    """The positions of ESM's batch the mean is taken over: the residues (1..L), or with
    `all_tokens` BOS and EOS too (0..L+1); on the device of `lengths`."""
    import torch

    positions = torch.arange(width, device=lengths.device)
    first, last = (1, lengths) if pooling == "residues" else (0, lengths + 1)
    return (positions[None, :] >= first) & (positions[None, :] <= last[:, None])


def embed_on_host(backend, sequences: list[str], layers: list[int]) -> dict:
    """Mean embeddings of a few sequences, on the CPU: a backend's `embed` (tests, benchmarks)."""
    pooled = backend.forward(backend.prepare(sequences), layers)["mean"]
    return {layer: values.cpu() for layer, values in pooled.items()}


def letter_table(token_of, unknown: int):
    """Residue letter -> token id as a 256-entry lookup table: one gather per batch instead of
    a tokenizer's per-letter work, which costs a fifth of the time of a small model."""
    import torch

    table = torch.full((256,), unknown, dtype=torch.int64)
    for letter in PROTEIN_ALPHABET:
        table[ord(letter)] = token_of(letter)
    return table


def letter_tokens(sequences: list[str], truncation: int, table, bos: int, eos: int, pad: int):
    """ESM's batch (BOS, residues cut at `truncation`, EOS, padding) and each row's residues."""
    import torch

    lengths = [min(len(sequence), truncation) for sequence in sequences]
    tokens = torch.full((len(sequences), max(lengths) + 2), pad)
    tokens[:, 0] = bos
    for row, (sequence, length) in enumerate(zip(sequences, lengths, strict=True)):
        if length:
            letters = torch.frombuffer(bytearray(sequence[:length], "ascii"), dtype=torch.uint8)
            tokens[row, 1 : length + 1] = table[letters.long()]
        tokens[row, length + 1] = eos
    return tokens, torch.tensor(lengths)


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
    """fp32, fp16 or bf16 for `precision` on `device` (seqembed.precision)."""
    return choose_precision(precision, device).precision


def torch_dtype(precision: str, device: str):
    """The dtype a backend computes in, and why: seqembed.precision's choice, with bf16
    under `auto` falling back to fp16 on GPUs without bf16 tensor cores (pre-Ampere: V100,
    T4)."""
    import torch

    choice = choose_precision(precision, device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[choice.precision]
    if (
        precision == "auto"
        and device.startswith("cuda")
        and not torch.cuda.is_bf16_supported(including_emulation=False)
    ):
        return torch.float16, "auto: a GPU without bf16 (before Ampere)"
    return dtype, choice.reason


#: on the CPU, products of different row counts each get a compiled oneDNN kernel (about 0.7
#: MB, a few ms to build), kept in two caches (oneDNN's and ideep's, torch's wrapper) of 1,024
#: entries by default: a resident worker grew by megabytes per file until they filled. A
#: cache too small costs more: at 16 entries, files of proteins of 50-600 residues (25 row
#: counts) rebuilt kernels batch after batch and ran at two thirds of the speed. ESM-2's packed
#: layers run 16 row counts up to 1,024 (cpu_layers.bucketed_rows), 4 products each
KERNEL_CACHE_ENTRIES = 128
KERNEL_CACHES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_kernel_caches() -> None:
    """Before a model's first product: the caches read their size when first used (a user's
    own setting wins). On a GPU they are never used."""
    for setting in KERNEL_CACHES:
        os.environ.setdefault(setting, str(KERNEL_CACHE_ENTRIES))


def load_backend(
    model: str,
    *,
    device: str,
    precision: str,
    truncation: int,
    model_cache: str | None = None,
    trust_remote_code: bool = False,
    pooling: str = "auto",
) -> Backend:
    """fair-esm's checkpoints and hub names through fair-esm; Hugging Face folders and hub ids
    through transformers. Imports torch."""
    bound_kernel_caches()
    options = {"device": device, "precision": precision, "truncation": truncation}
    if is_hf_model(model):
        from seqembed.compute.backends.hf import HfBackend

        return HfBackend.load(
            model,
            model_cache=model_cache,
            trust_remote_code=trust_remote_code,
            pooling=pooling,
            **options,
        )
    from seqembed.compute.backends.esm import EsmBackend

    return EsmBackend.load(model, model_cache=model_cache, pooling=pooling, **options)
