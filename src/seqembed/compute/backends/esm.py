"""ESM-2 through fair-esm's own loader and model code."""

from __future__ import annotations

import argparse
import contextlib
import re
from pathlib import Path

import esm
import torch
from esm.model.esm2 import ESM2

from seqembed import faults
from seqembed.compute.backends import (
    PROTEIN_ALPHABET,
    ModelError,
    embed_on_host,
    letter_pooling_mask,
    letter_table,
    letter_token_counts,
    letter_tokens,
    resolve_layers,
    select_outputs,
    torch_dtype,
)
from seqembed.compute.backends.attention import use_fused_attention
from seqembed.compute.backends.cpu_layers import pack_layers, packing_available, padded_positions
from seqembed.compute.models import cached_checkpoint, is_checkpoint_path
from seqembed.errors import ReadError

__all__ = ["PROTEIN_ALPHABET", "EsmBackend", "load_esm", "read_checkpoint"]


# the prefixes of the released checkpoints' keys, as fair-esm's loader strips them
CHECKPOINT_PREFIX = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")


def checkpoint_path(model: str, model_cache: str | None = None) -> Path:
    """The checkpoint file behind `model`: the path itself, or a hub name's file in the model
    cache (where the pre-flight fetches it when a run starts)."""
    if is_checkpoint_path(model):
        return Path(model).expanduser()
    return cached_checkpoint(model, model_cache)


def read_checkpoint(path: Path) -> dict:
    """The checkpoint memory-mapped: its tensors are read from disk when used, not first
    copied into memory, so even a 15B file opens in a moment."""
    torch.serialization.add_safe_globals([argparse.Namespace])
    faults.maybe_fail_model_read(path)
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as error:
        if "zipfile" not in str(error) and "mmap" not in str(error):
            raise
        # torch's legacy checkpoint format cannot be memory-mapped: read it whole
        return torch.load(path, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def skipped_weight_init():
    """Build modules with uninitialised (never touched, so never paged-in) weights. Not the
    meta device: its first use imports torch's decomposition machinery, 1.5 s per process,
    more than a small model takes to initialise."""
    names = [name for name in dir(torch.nn.init) if name.endswith("_") and not name.startswith("_")]
    saved = {name: getattr(torch.nn.init, name) for name in names}
    try:
        for name in names:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def load_esm2_direct(path: Path) -> tuple[ESM2, esm.Alphabet]:
    """fair-esm's ESM-2 loading without its two avoidable costs: the model is built without
    random initialisation of weights about to be overwritten, and takes the checkpoint's
    tensors as they are (`assign=True`, memory-mapped, no second copy), then moves once to the
    target device and precision. Same architecture, same weights, same
    numbers as esm.pretrained.load_model_and_alphabet_local."""
    data = read_checkpoint(path)
    state = {CHECKPOINT_PREFIX.sub("", key): value for key, value in data["model"].items()}
    regression = path.with_name(f"{path.stem}-contact-regression.pt")
    if regression.is_file():
        regression_state = torch.load(regression, map_location="cpu", weights_only=True)
        state.update(regression_state["model"])
    cfg = data["cfg"]["model"]
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    with skipped_weight_init():
        network = ESM2(
            num_layers=cfg.encoder_layers,
            embed_dim=cfg.encoder_embed_dim,
            attention_heads=cfg.encoder_attention_heads,
            alphabet=alphabet,
            token_dropout=cfg.token_dropout,
        )
    for name, parameter in network.contact_head.regression.named_parameters():
        # contacts are never computed here; fair-esm, too, runs without these weights
        state.setdefault(f"contact_head.regression.{name}", torch.zeros(parameter.shape))
    network.load_state_dict(state, strict=True, assign=True)
    return network, alphabet


def load_esm(
    model: str, device: str, dtype: torch.dtype, model_cache: str | None = None
) -> tuple[ESM2, esm.Alphabet, str]:
    """A local checkpoint path or a fair-esm hub name (e.g. esm2_t33_650M_UR50D), on
    `device` in `dtype`, in eval mode. What cannot be read or built is a ModelError (the same
    on any device, not retried); moving it to the device can fail like any GPU work (out of
    memory, a failing GPU) and is left to the caller's classification."""
    # fair-esm's checkpoints store an argparse.Namespace, which torch.load's weights_only
    # mode (default since torch 2.6) rejects; allow exactly that class
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        if not is_checkpoint_path(model) and not (
            model.startswith("esm") and hasattr(esm.pretrained, model)
        ):
            raise ModelError(f"unknown model '{model}': not a file and not a fair-esm hub name")
        path = checkpoint_path(model, model_cache)
        if not path.is_file():
            if is_checkpoint_path(model):
                raise ModelError(f"model checkpoint not found: {model}")
            # jobs never download: compute nodes often have no internet
            raise ModelError(
                f"model {model} is not in the model cache {path.parent} on this host: the "
                "pre-flight fetches it there when a run starts; set model_cache to a folder "
                "every node sees"
            )
        if path.stem.startswith("esm2"):
            network, alphabet = load_esm2_direct(path)
        else:  # ESM-1b/1v and friends: fair-esm's own loader
            network, alphabet = esm.pretrained.load_model_and_alphabet_local(str(path))
        name = path.stem
    except ModelError:
        raise
    except OSError as error:
        # the pre-flight read this file: a shared disk that failed once may not again
        reason = error.strerror or str(error)
        raise ReadError(f"cannot read model file {error.filename or model}: {reason}") from error
    except Exception as error:  # noqa: BLE001 - any loader failure is one line for the user
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelError(
            f"cannot load model '{model}': {type(error).__name__}: {first_line}"
        ) from error
    return network.eval().to(device=device, dtype=dtype), alphabet, name


class EsmBackend:
    alphabet = PROTEIN_ALPHABET
    extra_tokens = 2  # BOS + EOS
    #: why the network runs in its dtype (seqembed.precision), for the records
    precision_reason = ""
    #: batches padded to a multiple of 16 positions for the CPU's attention kernel
    #: (compute.backends.cpu_layers), which come with the packed layers
    packed = False

    def __init__(
        self, network, alphabet, name: str, device: str, dtype, truncation: int, pooling="auto"
    ):
        self.network = network
        #: residues (fair-esm's mean) or all_tokens (BOS and EOS included)
        self.pooling = "residues" if pooling == "auto" else pooling
        self.esm_alphabet = alphabet
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.truncation = truncation
        self.num_layers = network.num_layers
        self.embed_dim = network.embed_dim
        self.attention_heads = network.attention_heads
        # residue letter -> token id, fair-esm's own vocabulary
        self._token_of = letter_table(alphabet.get_idx, alphabet.unk_idx)

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str,
        precision: str,
        truncation: int,
        model_cache: str | None = None,
        pooling: str = "auto",
    ) -> EsmBackend:
        dtype, reason = torch_dtype(precision, device)
        network, alphabet, name = load_esm(model, device, dtype, model_cache)
        use_fused_attention(network)
        # the logits are never read: fair-esm's LM head (an E x E layer, a layer norm and
        # the vocabulary projection, over every token) is not computed
        network.lm_head = torch.nn.Identity()
        backend = cls(network, alphabet, name, device, dtype, truncation, pooling)
        backend.precision_reason = reason
        if backend.device.type == "cpu" and packing_available(dtype):
            backend.packed = pack_layers(network) > 0
        return backend

    def resolve_layers(self, layers) -> list[int]:
        return resolve_layers(layers, self.num_layers, self.name)

    def tokenize(self, sequences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens fair-esm's batch converter makes (BOS, residues cut at `truncation`, EOS,
        padding), and the residue count of each row."""
        alphabet = self.esm_alphabet
        return letter_tokens(
            sequences,
            self.truncation,
            self._token_of,
            alphabet.cls_idx,
            alphabet.eos_idx,
            alphabet.padding_idx,
        )

    def token_counts(self, sequences: list[str]) -> list[int]:
        return letter_token_counts(sequences, self.truncation)

    def prepare(self, sequences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, lengths = self.tokenize(sequences)
        if self.packed:
            tokens = padded_positions(tokens, self.esm_alphabet.padding_idx)
        if self.device.type == "cuda":
            # page-locked: the copy to the GPU runs without blocking this thread
            tokens, lengths = tokens.pin_memory(), lengths.pin_memory()
        return tokens, lengths

    @torch.inference_mode()
    def forward(
        self, prepared, layers: list[int], include=("mean",)
    ) -> dict[str, dict[int, torch.Tensor]]:
        """kind -> layer -> values, as fair-esm's extraction names the kinds: `mean` over the
        residues and `bos` (position 0), float32 [B, D]; `per_tok`, positions 1..L of each
        row, [B, longest L, D] in the model's precision (rows past a sequence's end are
        padding; the caller cuts them)."""
        tokens, lengths = prepared
        # the residues of the longest row (the batch may carry padding beyond it)
        longest = int(lengths.max()) if len(lengths) else 0
        tokens = tokens.to(self.device, non_blocking=True)
        lengths = lengths.to(self.device, non_blocking=True)
        out = self.network(tokens, repr_layers=layers, return_contacts=False)
        pooled_over = letter_pooling_mask(lengths, tokens.shape[1], self.pooling)
        return select_outputs(out["representations"], layers, include, pooled_over, longest)

    def embed(self, sequences: list[str], layers: list[int]) -> dict[int, torch.Tensor]:
        return embed_on_host(self, sequences, layers)
