"""Stand-in for Nucleotide Transformer v2's modeling_esm.py, written for transformers 4
(see ../README.md): pre-layer-norm ESM blocks, rotary positions, a bias-free SwiGLU."""

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput
from transformers.modeling_utils import (
    PreTrainedModel,
    find_pruneable_heads_and_indices,  # noqa: F401 - imported as the real code does
    prune_linear_layer,  # noqa: F401
)

from .esm_config import EsmConfig


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq)
        self._seq_len_cached = None
        self._cos_cached = None
        self._sin_cached = None

    def forward(self, q, k):
        length = k.shape[-2]
        if length != self._seq_len_cached or self._cos_cached.device != k.device:
            self._seq_len_cached = length
            # positions in inv_freq's dtype, as the real code numbers them
            positions = torch.arange(length, device=k.device).type_as(self.inv_freq)
            freqs = torch.outer(positions, self.inv_freq)
            table = torch.cat((freqs, freqs), dim=-1)
            self._cos_cached = table.cos()[None, None]
            self._sin_cached = table.sin()[None, None]
        cos, sin = self._cos_cached, self._sin_cached
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class EsmSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.rotary_embeddings = RotaryEmbedding(self.head_size)
        self.is_decoder = config.is_decoder

    def split(self, x):
        return x.view(*x.shape[:2], self.heads, self.head_size).permute(0, 2, 1, 3)

    def forward(self, hidden_states, attention_mask=None, head_mask=None):
        query = self.split(self.query(hidden_states)) * self.head_size**-0.5
        key, value = self.split(self.key(hidden_states)), self.split(self.value(hidden_states))
        query, key = self.rotary_embeddings(query, key)
        scores = torch.matmul(query, key.transpose(-1, -2))
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = nn.functional.softmax(scores, dim=-1)
        if head_mask is not None:
            probs = probs * head_mask
        context = torch.matmul(probs, value).permute(0, 2, 1, 3).contiguous()
        return context.view(*context.shape[:2], -1)


class EsmLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.add_cross_attention and not config.is_decoder:
            raise RuntimeError("cross attention is for decoders")
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = EsmSelfAttention(config)
        self.attention_output = nn.Linear(config.hidden_size, config.hidden_size)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        bias = config.add_bias_fnn
        self.intermediate = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=bias)
        self.output = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)

    def forward(self, hidden_states, attention_mask=None, head_mask=None):
        attended = self.attention(self.attention_norm(hidden_states), attention_mask, head_mask)
        hidden_states = hidden_states + self.attention_output(attended)
        gate, up = self.intermediate(self.ffn_norm(hidden_states)).chunk(2, dim=-1)
        return (hidden_states + self.output(nn.functional.silu(gate) * up),)


class EsmPreTrainedModel(PreTrainedModel):
    config_class = EsmConfig
    base_model_prefix = "esm"

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()


class EsmModel(EsmPreTrainedModel):
    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config)
        self.config = config
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.register_buffer(
            "position_ids",
            torch.arange(config.max_position_embeddings).expand((1, -1)),
            persistent=False,
        )
        self.layer = nn.ModuleList(EsmLayer(config) for _ in range(config.num_hidden_layers))
        self.emb_layer_norm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, head_mask=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extended_mask = self.get_extended_attention_mask(attention_mask, input_ids.shape)
        head_mask = self.get_head_mask(head_mask, self.config.num_hidden_layers)
        hidden_states = self.word_embeddings(input_ids) * attention_mask.unsqueeze(-1)
        states = (hidden_states,)
        for index, layer in enumerate(self.layer):
            hidden_states = layer(hidden_states, extended_mask, head_mask[index])[0]
            states += (hidden_states,)
        hidden_states = self.emb_layer_norm_after(hidden_states)
        states = states[:-1] + (hidden_states,)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=states)


class EsmForMaskedLM(EsmPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.esm = EsmModel(config, add_pooling_layer=False)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=None, **kwargs):
        output = self.esm(input_ids, attention_mask=attention_mask)
        return MaskedLMOutput(
            logits=self.lm_head(output.last_hidden_state),
            hidden_states=output.hidden_states if output_hidden_states else None,
        )
