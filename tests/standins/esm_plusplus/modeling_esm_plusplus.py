"""Stand-in for ESM++'s modeling_esm_plusplus.py (ESM C in transformers; see ../README.md):
pre-layer-norm blocks with q/k layer norms, rotary positions, a SwiGLU, residuals scaled by
sqrt(layers / 36), a final layer norm without bias; its tokenizer made in code."""

import math
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from tokenizers.models import BPE
from tokenizers.processors import TemplateProcessing
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast
from transformers.modeling_outputs import ModelOutput

SEQUENCE_VOCAB = [
    "<cls>", "<pad>", "<eos>", "<unk>",
    *"LAGVSERTIDPKQNFYMHWCXBUZO.-|",
    "<mask>",
]  # fmt: skip


class EsmSequenceTokenizer(PreTrainedTokenizerFast):
    """One token per letter: byte pairs without merges."""

    def __init__(self, **kwargs):
        vocabulary = {token: index for index, token in enumerate(SEQUENCE_VOCAB)}
        tokenizer = Tokenizer(BPE(vocabulary, merges=[], unk_token="<unk>"))
        tokenizer.add_special_tokens(["<cls>", "<pad>", "<eos>", "<unk>", "<mask>"])
        tokenizer.post_processor = TemplateProcessing(
            single="<cls> $A <eos>", special_tokens=[("<cls>", 0), ("<eos>", 2)]
        )
        super().__init__(
            tokenizer_object=tokenizer,
            cls_token="<cls>",
            pad_token="<pad>",
            eos_token="<eos>",
            unk_token="<unk>",
            mask_token="<mask>",
            **kwargs,
        )


class ESMplusplusConfig(PretrainedConfig):
    model_type = "ESMplusplus"

    def __init__(
        self, vocab_size=64, hidden_size=960, num_attention_heads=15, num_hidden_layers=30, **kwargs
    ):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_hidden_layers = num_hidden_layers


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, q, k):
        positions = torch.arange(q.shape[1], device=q.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq)
        table = torch.cat((freqs, freqs), dim=-1)[None, :, None, :]
        cos, sin = table.cos().to(q.dtype), table.sin().to(q.dtype)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.layernorm_qkv = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, 3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.q_ln = nn.LayerNorm(d_model, bias=False)
        self.k_ln = nn.LayerNorm(d_model, bias=False)
        self.rotary = RotaryEmbedding(self.d_head)

    def forward(self, x, attention_mask=None):
        q, k, v = self.layernorm_qkv(x).chunk(3, dim=-1)
        q, k = self.q_ln(q), self.k_ln(k)
        heads = (*x.shape[:2], self.n_heads, self.d_head)
        q, k = self.rotary(q.view(heads), k.view(heads))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.view(heads).transpose(1, 2)
        context = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        return self.out_proj(context.transpose(1, 2).reshape(x.shape)), None


class UnifiedTransformerBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, residue_scaling_factor: float):
        super().__init__()
        self.attn = MultiHeadAttention(d_model, n_heads)
        hidden = int(((8 / 3) * d_model + 255) // 256 * 256)
        self.ffn = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, 2 * hidden, bias=False),
            SwiGLU(),
            nn.Linear(hidden, d_model, bias=False),
        )
        self.scaling_factor = residue_scaling_factor

    def forward(self, x, attention_mask=None, output_attentions=False):
        attended, weights = self.attn(x, attention_mask)
        x = x + attended / self.scaling_factor
        x = x + self.ffn(x) / self.scaling_factor
        return x, weights


class SwiGLU(nn.Module):
    def forward(self, x):
        gate, up = x.chunk(2, dim=-1)
        return nn.functional.silu(gate) * up


class TransformerStack(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_layers: int):
        super().__init__()
        scaling = math.sqrt(n_layers / 36)
        self.blocks = nn.ModuleList(
            UnifiedTransformerBlock(d_model, n_heads, scaling) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model, bias=False)

    def forward(self, x, attention_mask=None, output_hidden_states=False):
        mask = None
        if attention_mask is not None:
            mask = attention_mask[:, None, None, :].bool()
        hidden_states = ()
        for block in self.blocks:
            x, _ = block(x=x, attention_mask=mask, output_attentions=False)
            hidden_states += (x,)
        last = self.norm(x)
        return last, (hidden_states + (last,)) if output_hidden_states else None


@dataclass
class ESMplusplusOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple | None = None


class PreTrainedESMplusplusModel(PreTrainedModel):
    config_class = ESMplusplusConfig
    base_model_prefix = "esm"

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)


class ESMplusplusModel(PreTrainedESMplusplusModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.transformer = TransformerStack(
            config.hidden_size, config.num_attention_heads, config.num_hidden_layers
        )
        self.tokenizer = EsmSequenceTokenizer()
        self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=None, **kwargs):
        last, states = self.transformer(self.embed(input_ids), attention_mask, output_hidden_states)
        return ESMplusplusOutput(last_hidden_state=last, hidden_states=states)


class ESMplusplusForMaskedLM(ESMplusplusModel):
    def __init__(self, config):
        super().__init__(config)
        self.sequence_head = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size),
            nn.GELU(),
            nn.LayerNorm(config.hidden_size),
            nn.Linear(config.hidden_size, config.vocab_size),
        )
        self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=None, **kwargs):
        output = super().forward(input_ids, attention_mask, output_hidden_states)
        output.logits = self.sequence_head(output.last_hidden_state)
        return output
