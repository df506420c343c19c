"""Tiny Hugging Face models built here with transformers' own classes, for tests and the
demo (no downloads):

- an ESM-2 converted from a fair-esm checkpoint (the demo's), saved as the hub's ESM-2
  folders are (EsmForMaskedLM, safetensors, the ESM tokenizer's vocab.txt);
- a BERT-family DNA model with a byte-pair tokenizer trained on random DNA, or a stand-in for
  DNABERT-2/-S with its own model code (auto_map in config.json, the code beside), written
  here with the traits of theirs that matter (MODELING's doc).

    python -m seqembed.demo_hf esm2 <fair-esm checkpoint> <folder>
    python -m seqembed.demo_hf dna <folder> [--remote-code]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

#: fair-esm's ESM-2 parameter names -> transformers' EsmForMaskedLM names
RENAMES = [
    (r"^embed_tokens\.", "esm.embeddings.word_embeddings."),
    (r"^layers\.(\d+)\.self_attn\.q_proj\.", r"esm.encoder.layer.\1.attention.self.query."),
    (r"^layers\.(\d+)\.self_attn\.k_proj\.", r"esm.encoder.layer.\1.attention.self.key."),
    (r"^layers\.(\d+)\.self_attn\.v_proj\.", r"esm.encoder.layer.\1.attention.self.value."),
    (r"^layers\.(\d+)\.self_attn\.out_proj\.", r"esm.encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.self_attn_layer_norm\.", r"esm.encoder.layer.\1.attention.LayerNorm."),
    (r"^layers\.(\d+)\.fc1\.", r"esm.encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.fc2\.", r"esm.encoder.layer.\1.output.dense."),
    (r"^layers\.(\d+)\.final_layer_norm\.", r"esm.encoder.layer.\1.LayerNorm."),
    (r"^emb_layer_norm_after\.", "esm.encoder.emb_layer_norm_after."),
    (r"^lm_head\.weight$", "lm_head.decoder.weight"),
    (r"^lm_head\.", "lm_head."),
]


def convert_esm2_checkpoint(checkpoint: str | Path, folder: str | Path) -> Path:
    """The fair-esm ESM-2 `checkpoint` as a Hugging Face model folder (same weights)."""
    import esm
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    from seqembed.compute.backends.esm import CHECKPOINT_PREFIX, read_checkpoint

    data = read_checkpoint(Path(checkpoint))
    cfg = data["cfg"]["model"]
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    config = EsmConfig(
        vocab_size=len(alphabet.all_toks),
        mask_token_id=alphabet.mask_idx,
        pad_token_id=alphabet.padding_idx,
        hidden_size=cfg.encoder_embed_dim,
        num_hidden_layers=cfg.encoder_layers,
        num_attention_heads=cfg.encoder_attention_heads,
        intermediate_size=4 * cfg.encoder_embed_dim,
        max_position_embeddings=1026,
        position_embedding_type="rotary",
        token_dropout=cfg.token_dropout,
        emb_layer_norm_before=False,
        layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        architectures=["EsmForMaskedLM"],
    )
    state = {}
    for key, value in data["model"].items():
        key = CHECKPOINT_PREFIX.sub("", key)
        if "rot_emb" in key or key.startswith("contact_head"):
            continue  # recomputed by transformers; contacts are never used here
        for pattern, replacement in RENAMES:
            if re.match(pattern, key):
                state[re.sub(pattern, replacement, key)] = value.float()
                break
    network = EsmForMaskedLM(config)
    missing, unexpected = network.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(re.search("rotary|position_ids|contact_head", name) for name in missing), missing
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    network.save_pretrained(folder)
    vocabulary = folder / "vocab.txt"
    vocabulary.write_text("\n".join(alphabet.all_toks) + "\n")
    EsmTokenizer(str(vocabulary)).save_pretrained(folder)
    return folder


CONFIGURATION = '''"""The config of the stand-in for DNABERT-2/-S's own code: like theirs, a
subclass of transformers' BertConfig with an ALiBi size, and no pad_token_id in its
config.json."""

from transformers import BertConfig


class TinyDnaConfig(BertConfig):
    model_type = "tiny_dnabert"

    def __init__(self, alibi_starting_size=64, **kwargs):
        super().__init__(**kwargs)
        self.alibi_starting_size = alibi_starting_size
'''

MODELING = '''"""A stand-in for DNABERT-2/-S's own model code (bert_layers.py), written here
with the traits of theirs that broke on transformers 5 and in half precision, none of their
code:

- loaded only with trust_remote_code; imports einops; binds a Triton flash-attention kernel
  that fails on current Triton whenever it is not None;
- ALiBi attention with no position embeddings: the slopes made in __init__ from a Python
  list (torch.Tensor, on the CPU) times torch.arange, kept as a plain attribute, not a
  buffer, and rebuilt larger when a longer sequence comes;
- a non-persistent buffer computed in __init__ (as the rotary frequencies of NT v2 and
  ESM++), which transformers 5 leaves as uninitialised memory after loading;
- only the real tokens kept between blocks ([tokens of the batch, D], bert_padding.py's
  unpad_input), so the blocks' outputs are no layers one row per token;
- the attention bias (padding mask plus ALiBi) made in float32 whatever the weights' dtype,
  so attention probabilities are float32 and meet half-precision values in a matmul;
- forward returns DNABERT-2's tuple (hidden states, pooled).
"""

import math

import einops  # noqa: F401
import torch
from torch import nn
from transformers import BertPreTrainedModel

from .configuration_tinydna import TinyDnaConfig


def _triton_kernel(*args, **kwargs):
    raise TypeError("dot() got an unexpected keyword argument 'trans_b'")


flash_attn_qkvpacked_func = _triton_kernel


class TinyDnaLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden, indices, shape, bias):
        hidden = _padded(hidden, indices, shape)
        batch, length, width = hidden.shape
        q, k, v = self.qkv(hidden).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if flash_attn_qkvpacked_func is not None:
            flash_attn_qkvpacked_func(q, k, v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
        probabilities = scores.softmax(-1)
        context = torch.matmul(probabilities, v).transpose(1, 2).reshape(batch, length, width)
        hidden = self.norm1(hidden + self.out(context))
        hidden = self.norm2(hidden + self.down(nn.functional.gelu(self.up(hidden))))
        return hidden.reshape(batch * length, width)[indices]


def _padded(tokens, indices, shape):
    """[tokens of the batch, D] back to [B, T, D], zeros at the padding (bert_padding.py's
    pad_input)."""
    rows = tokens.new_zeros(shape[0] * shape[1], tokens.shape[-1])
    return rows.index_copy(0, indices, tokens).view(*shape, -1)


class TinyDnaEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.heads = config.num_attention_heads
        self.layer = nn.ModuleList(TinyDnaLayer(config) for _ in range(config.num_hidden_layers))
        self.alibi = self.alibi_table(config.alibi_starting_size)

    def alibi_table(self, size, device=None):
        positions = torch.arange(size, device=device)
        distance = (positions[None, :] - positions[:, None]).abs()
        slopes = [2 ** (-8 * (head + 1) / self.heads) for head in range(self.heads)]
        return (torch.Tensor(slopes).to(device)[:, None, None] * -distance)[None]

    def forward(self, hidden, attention_mask):
        length = hidden.shape[1]
        if self.alibi.shape[-1] < length:
            self.alibi = self.alibi_table(length, hidden.device)
        elif self.alibi.device != hidden.device:
            self.alibi = self.alibi.to(hidden.device)
        padding = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        bias = (padding + self.alibi[:, :, :length, :length]).float()
        # only the real tokens between blocks, as DNABERT-2's unpad_input keeps them
        indices = attention_mask.flatten().nonzero().flatten()
        shape = hidden.shape[:2]
        hidden = hidden.reshape(-1, hidden.shape[-1])[indices]
        for layer in self.layer:
            hidden = layer(hidden, indices, shape, bias)
        return _padded(hidden, indices, shape)


class TinyDnaModel(BertPreTrainedModel):
    config_class = TinyDnaConfig

    def __init__(self, config):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embedding_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # computed here and never saved, as NT v2's and ESM++'s rotary frequencies are
        scale = torch.arange(config.hidden_size) / config.hidden_size + 0.5
        self.register_buffer("channel_scale", scale, persistent=False)
        self.encoder = TinyDnaEncoder(config)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.embedding_norm(self.word_embeddings(input_ids)) * self.channel_scale
        hidden = self.encoder(hidden, attention_mask)
        return (hidden, torch.tanh(self.pooler(hidden[:, 0])))
'''


def random_dna(rng: random.Random, length: int) -> str:
    return "".join(rng.choices("ACGT", k=length))


def write_tiny_dna_model(
    folder: str | Path,
    *,
    remote_code: bool = False,
    layers: int = 2,
    dim: int = 32,
    heads: int = 4,
    seed: int = 0,
) -> Path:
    """A random BERT with a byte-pair tokenizer trained on random DNA (and N)."""
    import torch
    from tokenizers import Tokenizer, models, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    rng = random.Random(seed)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=specials, show_progress=False)
    corpus = [random_dna(rng, rng.randint(50, 300)) for _ in range(400)] + ["N" * 20]
    tokenizer.train_from_iterator(corpus, trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * dim,
        max_position_embeddings=512,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=tokenizer.token_to_id("[PAD]"),
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    if not remote_code:
        BertModel(config).eval().save_pretrained(folder)
        return folder
    # the stand-in for DNABERT-2/-S's own code: its config and weights made through its own
    # classes, built on the CPU as transformers 4 (and from_config) builds them
    (folder / "configuration_tinydna.py").write_text(CONFIGURATION)
    (folder / "modeling_tinydna.py").write_text(MODELING)
    settings = {
        **{k: v for k, v in config.to_dict().items() if k != "pad_token_id"},
        "model_type": "tiny_dnabert",
        "architectures": ["TinyDnaModel"],
        "alibi_starting_size": 64,
        "auto_map": {
            "AutoConfig": "configuration_tinydna.TinyDnaConfig",
            "AutoModel": "modeling_tinydna.TinyDnaModel",
        },
    }
    (folder / "config.json").write_text(json.dumps(settings, indent=2))
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel

    own_config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    network = AutoModel.from_config(own_config, trust_remote_code=True).eval()
    save_file(
        {k: v.contiguous() for k, v in network.state_dict().items()}, folder / "model.safetensors"
    )
    return folder


def write_tiny_nt_v1(folder: str | Path, *, max_positions: int = 34, seed: int = 0) -> Path:
    """A Nucleotide Transformer v1 as InstaDeep's hub folders are made (transformers'
    EsmForMaskedLM, learned absolute positions, the slow EsmTokenizer over their vocabulary of
    4 special tokens, the 4,096 6-mers and single bases), tiny, with few positions so that a
    long read meets the limit."""
    import itertools

    import torch
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    torch.manual_seed(seed)
    kmers = ["".join(letters) for letters in itertools.product("ATCG", repeat=6)]
    tokens = ["<unk>", "<pad>", "<mask>", "<cls>", *kmers, "A", "T", "C", "G", "N"]
    config = EsmConfig(
        vocab_size=len(tokens),
        pad_token_id=1,
        mask_token_id=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=max_positions,
        position_embedding_type="absolute",
        emb_layer_norm_before=False,
        token_dropout=False,
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        tie_word_embeddings=False,
        architectures=["EsmForMaskedLM"],
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    EsmForMaskedLM(config).eval().save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    tokenizer = EsmTokenizer(str(folder / "vocab.txt"), eos_token=None)
    tokenizer.model_max_length = 1000
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    esm2 = commands.add_parser("esm2")
    esm2.add_argument("checkpoint")
    esm2.add_argument("folder")
    dna = commands.add_parser("dna")
    dna.add_argument("folder")
    dna.add_argument("--remote-code", action="store_true")
    options = parser.parse_args()
    if options.command == "esm2":
        print(convert_esm2_checkpoint(options.checkpoint, options.folder))
    else:
        print(write_tiny_dna_model(options.folder, remote_code=options.remote_code))


if __name__ == "__main__":
    main()
