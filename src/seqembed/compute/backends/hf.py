"""Models in Hugging Face format: ESM-2 from its maintained home and Nucleotide Transformer v1
through transformers' own classes; models with their own code (DNABERT-2/-S, Nucleotide
Transformer v2, ESM C through ESM++; own_code.py). Protein models read one token per residue;
nucleotide models their tokenizer's tokens (byte pairs, k-mers).

The layers are numbered as fair-esm numbers them, and only the requested ones are kept
(layer_taps.py).

Pooling: `residues`, the mean over the sequence's own tokens (no special tokens), fair-esm's
definition and the default for ESM; `all_tokens`, the mean over every token of the sequence,
special tokens included, as DNABERT-2/-S document it and VirNucPro computes it, the default
for nucleotide models.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

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
from seqembed.compute.backends.cpu_layers import (
    POSITION_MULTIPLE,
    pack_linear_layers,
    packing_available,
    padded_positions,
)
from seqembed.compute.backends.layer_taps import LayerTaps, find_blocks
from seqembed.compute.backends.own_code import autocast_for, load_own_code
from seqembed.compute.hf_models import (
    DNA_ALPHABET,
    is_protein_folder,
    model_config,
    model_folder,
    offline,
    remote_code,
)
from seqembed.errors import ReadError

#: sequences tokenised at once when counting a file's tokens
TOKENIZE_CHUNK = 1024


def protein_special_ids(tokenizer, name: str) -> tuple[int, int, int]:
    """BOS, EOS and padding of a protein model read residue by residue: ESM's <cls>, <eos>,
    <pad>; a BERT-style tokenizer's [CLS], [SEP], [PAD]. A ModelError if one is missing."""
    bos = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    pad = tokenizer.pad_token_id
    if None in (bos, eos, pad):
        raise ModelError(
            f"{name}: its tokenizer has no beginning, end or padding token (cls {bos}, eos "
            f"{eos}, pad {pad}): seqembed reads a protein model residue by residue between them"
        )
    return bos, eos, pad


def load_network(model: str, model_cache, dtype, trust_remote_code: bool):
    """Tokenizer and network from the local folder, offline; every loader failure is one
    ModelError line naming the model (an OS error reading the files is a ReadError)."""
    offline()
    folder = model_folder(model, model_cache)
    config = model_config(folder)
    own_code = remote_code(config)
    if own_code and not trust_remote_code:
        raise ModelError(
            f"model {model} ships its own code ({own_code}): set trust_remote_code: true to run "
            "it (only for models whose code you trust)"
        )
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.logging.set_verbosity_error()  # its load report: a table per worker start
    transformers.logging.disable_progress_bar()
    # BERT's and ESM's pooler: never used here
    options = {"local_files_only": True, "add_pooling_layer": False}
    try:
        tokenizer = None
        if own_code:
            network, tokenizer = load_own_code(folder, dtype)
        else:
            try:
                network = AutoModel.from_pretrained(
                    folder, dtype=dtype, attn_implementation="sdpa", **options
                )
            except (ValueError, ImportError):  # a class without fused attention
                network = AutoModel.from_pretrained(folder, dtype=dtype, **options)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(
                folder, trust_remote_code=trust_remote_code, local_files_only=True
            )
    except OSError as error:
        if isinstance(error, FileNotFoundError) or not error.errno:
            raise ModelError(f"cannot load model '{model}' from {folder}: {error}") from None
        raise ReadError(f"cannot read model '{model}' in {folder}: {error.strerror}") from error
    except Exception as error:  # noqa: BLE001 - any loader failure is one line for the user
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelError(
            f"cannot load model '{model}' from {folder}: {type(error).__name__}: {first_line}"
        ) from error
    return tokenizer, network, config, folder


class HfBackend:
    #: why the network runs in its dtype (seqembed.precision), for the records
    precision_reason = ""
    #: on the CPU: products over oneDNN's packed weights, batches padded to a multiple of 16
    #: positions (compute.backends.cpu_layers)
    packed = False

    def __init__(self, tokenizer, network, config: dict, name: str, device, dtype, **options):
        self.tokenizer = tokenizer
        self.network = network
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.truncation = options["truncation"]
        self.protein = options["protein"]
        self.alphabet = PROTEIN_ALPHABET if self.protein else DNA_ALPHABET
        pooling = options.get("pooling", "auto")
        self.pooling = (
            ("residues" if self.protein else "all_tokens") if pooling == "auto" else pooling
        )
        settings = network.config
        self.num_layers = settings.num_hidden_layers
        self.embed_dim = settings.hidden_size
        self.attention_heads = settings.num_attention_heads
        self.blocks = find_blocks(network, self.num_layers)
        # the most tokens the model's positions allow (rotary and ALiBi models, DNABERT-2/-S
        # among them: no limit); longer ones are cut there, as the model would fail on them
        limit = getattr(settings, "max_position_embeddings", None)
        unlimited = config.get("position_embedding_type") in ("rotary", "alibi") or (
            "alibi_starting_size" in config
        )
        if limit and config.get("model_type") == "esm":
            # ESM numbers positions from padding_idx + 1 (Nucleotide Transformer v1: 1,002
            # positions, 1,000 tokens)
            limit -= (getattr(settings, "pad_token_id", None) or 0) + 1
        self.max_tokens = None if unlimited or not limit else limit
        #: the model's own code: its blocks may not keep [B, T, D] (DNABERT-2 removes padding)
        self.own_code = bool(remote_code(config))
        # own code mixes float32 into its matmuls: half precision under autocast (own_code.py)
        self.autocast = (
            autocast_for(self.device, dtype) if self.own_code else contextlib.nullcontext()
        )
        if self.protein:
            self.extra_tokens = 2
            vocabulary = tokenizer.get_vocab()
            self._token_of = letter_table(vocabulary.get, tokenizer.unk_token_id)
            self.special = protein_special_ids(tokenizer, name)
        else:
            # the special tokens the tokenizer adds to every sequence ([CLS], [SEP])
            self.extra_tokens = len(tokenizer("", add_special_tokens=True)["input_ids"])
            self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str,
        precision: str,
        truncation: int,
        model_cache: str | None = None,
        trust_remote_code: bool = False,
        pooling: str = "auto",
    ) -> HfBackend:
        dtype, reason = torch_dtype(precision, device)
        tokenizer, network, config, folder = load_network(
            model, model_cache, dtype, trust_remote_code
        )
        # a hub id names itself; a folder by its name
        name = folder.name if Path(model).expanduser().is_dir() else model
        backend = cls(
            tokenizer,
            network.eval().to(device),
            config,
            name,
            device,
            dtype,
            truncation=truncation,
            pooling=pooling,
            protein=is_protein_folder(folder, config),
        )
        backend.precision_reason = reason
        # models with their own code may read their layers' weights: they keep them dense
        if backend.device.type == "cpu" and not backend.own_code and packing_available(dtype):
            backend.packed = pack_linear_layers(backend.network) > 0
        return backend

    def resolve_layers(self, layers) -> list[int]:
        layers = resolve_layers(layers, self.num_layers, self.name)
        if any(layer < self.num_layers for layer in layers) and not self.blocks:
            raise ModelError(
                f"{self.name}: only the last layer ({self.num_layers}) can be read: its blocks "
                "were not found"
            )
        return layers

    def token_counts(self, sequences: list[str]) -> list[int]:
        """What the model sees of each sequence: residues plus BOS/EOS for ESM; for a
        byte-pair tokenizer, its tokens (several letters each) plus its special tokens."""
        if self.protein:
            return letter_token_counts(sequences, self.truncation)
        counts = []
        for start in range(0, len(sequences), TOKENIZE_CHUNK):  # a file may hold millions
            encoded = self._encode(sequences[start : start + TOKENIZE_CHUNK])
            counts += [len(ids) for ids in encoded["input_ids"]]
        return counts

    def _encode(self, sequences: list[str], **options):
        """The tokenizer's ids, sequences cut at the truncation and at the model's limit."""
        return self.tokenizer(
            [sequence[: self.truncation] for sequence in sequences],
            add_special_tokens=True,
            truncation=self.max_tokens is not None,
            max_length=self.max_tokens,
            **options,
        )

    def prepare(self, sequences: list[str]):
        """Token ids, the attention mask, and the mask of the tokens the mean is taken over."""
        if self.protein:
            cls_id, eos_id, pad_id = self.special
            tokens, lengths = letter_tokens(
                sequences, self.truncation, self._token_of, cls_id, eos_id, pad_id
            )
            if self.packed:
                tokens = padded_positions(tokens, pad_id)
            attention = tokens != pad_id
            pooled_over = letter_pooling_mask(lengths, tokens.shape[1], self.pooling)
        else:
            multiple = POSITION_MULTIPLE if self.packed else None
            encoded = self._encode(
                sequences, padding=True, pad_to_multiple_of=multiple, return_tensors="pt"
            )
            tokens, attention = encoded["input_ids"], encoded["attention_mask"].bool()
            # the special tokens by id: the slow EsmTokenizer's own special_tokens_mask is one
            # longer than the ids once truncation cuts them (Nucleotide Transformer v1)
            residues = attention & ~torch.isin(tokens, self.special_ids)
            pooled_over = residues if self.pooling == "residues" else attention
        prepared = (tokens, attention.long(), pooled_over)
        if self.device.type == "cuda":
            prepared = tuple(tensor.pin_memory() for tensor in prepared)
        return prepared

    def _representations(self, tokens, attention, layers: list[int]) -> dict[int, torch.Tensor]:
        with LayerTaps(self.blocks, layers, self.num_layers) as taps, self.autocast:
            output = self.network(input_ids=tokens, attention_mask=attention)
        return taps.representations(output, tokens, self.name)

    @torch.inference_mode()
    def forward(self, prepared, layers: list[int], include=("mean",)):
        """kind -> layer -> values, as EsmBackend.forward."""
        tokens, attention, pooled_over = (t.to(self.device, non_blocking=True) for t in prepared)
        if "per_tok" in include and not self.protein:
            raise ModelError(f"{self.name}: per_tok is written for protein models only")
        representations = self._representations(tokens, attention, layers)
        # the residues of the longest row: a packed CPU batch has padding beyond it (per_tok
        # is for protein models, which count one token per residue)
        width = int(attention.sum(1).max()) if self.packed else tokens.shape[1]
        longest = width - self.extra_tokens
        return select_outputs(representations, layers, include, pooled_over, longest)

    def embed(self, sequences: list[str], layers: list[int]) -> dict[int, torch.Tensor]:
        return embed_on_host(self, sequences, layers)
