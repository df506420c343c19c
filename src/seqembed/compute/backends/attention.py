"""fair-esm's ESM-2 layers with fewer passes over memory: self-attention through torch's fused
scaled_dot_product_attention, q/k/v in one matrix product, q and k rotated in one pass.

fair-esm computes attention as two batched matrix products around a separate fp32 softmax,
materialising every T x T score matrix; the fused kernel (FlashAttention / memory-efficient
on a GPU, a tiled kernel on the CPU) computes the same softmax(q k^T) v without storing it.
Same projections, same rotary embedding, same key-padding mask: the results agree with
fair-esm's to fp32 rounding (tested). Attention weights are never needed here (no contact
prediction), so the fused path serves every call that does not ask for them. On a CPU in bf16
what is not a large matrix product costs as much as the products (docs/benchmarks.md: "The
forward pass on the CPU"): every pass saved here was measured there."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from esm.multihead_attention import MultiheadAttention
from esm.rotary_embedding import RotaryEmbedding


class FusedSelfAttention(MultiheadAttention):
    def forward(
        self,
        query,
        key=None,
        value=None,
        key_padding_mask=None,
        need_weights=True,
        need_head_weights=False,
        attn_mask=None,
        **kwargs,
    ):
        # ESM-2's layers always pass need_weights=True but use the weights only with
        # need_head_weights (contacts); anything unusual goes to fair-esm's own code
        plain_self_attention = (
            (key is None or key is query)
            and (value is None or value is query)
            and self.bias_k is None
            and not self.add_zero_attn
        )
        if need_head_weights or attn_mask is not None or kwargs or not plain_self_attention:
            return super().forward(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=need_weights,
                need_head_weights=need_head_weights,
                attn_mask=attn_mask,
                **kwargs,
            )
        length, batch, width = query.shape
        out = self.attend(self.qkv(query), length, batch, key_padding_mask)
        # (B, H, T, d) -> (T, B, H*d); CUDA's memory-efficient kernel returns a transposed,
        # non-contiguous layout, so reshape rather than view
        out = out.permute(2, 0, 1, 3).reshape(length, batch, width)
        return self.out_proj(out), None

    def attend(self, qkv, length: int, batch: int, key_padding_mask=None) -> torch.Tensor:
        """softmax(q k^T) v per head, (B, H, T, d), from the q/k/v product's T x B rows."""
        heads, head_width = self.num_heads, self.head_dim
        # laid out as the kernel reads them, (3, B, H, T, d), in one copy (the kernels ran
        # slower on strided views, both on this CPU)
        qkv = qkv.view(length, batch, 3, heads, head_width).permute(2, 1, 3, 0, 4).contiguous()
        q, k, v = qkv.unbind(dim=0)
        if self.rot_emb:
            # q and k rotated together, in place of fair-esm's two passes each
            q, k = rotated(qkv[:2], *rotary_tables(self.rot_emb, k))
        mask = None
        if key_padding_mask is not None:
            # True = may attend; one row per sequence, broadcast over heads and queries
            mask = ~key_padding_mask.view(batch, 1, 1, length).to(torch.bool)
        # the kernel scales q as fair-esm scales q_proj's output (the rotation is linear:
        # scaling before or after it is the same)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)


def rotary_tables(rotary: RotaryEmbedding, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for k's positions, computed in fp32 (see keep_rotary_in_fp32) and rounded
    once to k's precision, sin with the sign of rotate_half's first half folded in; kept per
    length and dtype, as fair-esm keeps its fp32 tables."""
    key = (k.shape[-2], k.dtype, k.device)
    if getattr(rotary, "seqembed_tables_key", None) != key:
        cos, sin = rotary._update_cos_sin_tables(k, seq_dimension=-2)
        cos, sin = cos[0, : key[0]], sin[0, : key[0]]
        half = sin.shape[-1] // 2
        signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        rotary.seqembed_tables = (cos.to(k.dtype), signed.to(k.dtype))
        rotary.seqembed_tables_key = key
    return rotary.seqembed_tables


def rotated(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """fair-esm's apply_rotary_pos_emb, x * cos + rotate_half(x) * sin, over the last
    dimension of x (positions in the first): rotate_half(x) is (-second, first), so with
    the sign in the table, (second, first) * signed_sin, exactly, in one pass fewer."""
    first, second = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat((second, first), dim=-1), signed_sin)


def keep_rotary_in_fp32(network: torch.nn.Module) -> None:
    """fair-esm builds rotary positions as `arange(T).type_as(inv_freq)`: in a bf16 model
    positions above 256 are rounded (0..1023 collapse to 513 values), so long sequences get
    wrong angles. The frequencies stay fp32; the fused attention casts the tables once."""
    for module in network.modules():
        if isinstance(module, RotaryEmbedding):
            module.inv_freq = module.inv_freq.float()
            module._seq_len_cached = None


class Projection(torch.nn.Module):
    """x W^T + b over weights that exist already (nn.Linear would first make and initialise
    its own); they are not parameters: the state dict keeps fair-esm's names."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def fuse_projections(module: MultiheadAttention) -> None:
    """q, k and v weights (and biases) as one (3E, E) matrix; the three projections keep
    theirs as views of it, so fair-esm's own path (contacts) and the state dict see the same
    numbers and no memory is doubled."""
    weight = torch.cat([module.q_proj.weight, module.k_proj.weight, module.v_proj.weight])
    bias = torch.cat([module.q_proj.bias, module.k_proj.bias, module.v_proj.bias])
    module.qkv = Projection(weight, bias)
    for index, projection in enumerate((module.q_proj, module.k_proj, module.v_proj)):
        rows = slice(index * module.embed_dim, (index + 1) * module.embed_dim)
        projection.weight = torch.nn.Parameter(weight[rows], requires_grad=False)
        projection.bias = torch.nn.Parameter(bias[rows], requires_grad=False)


def use_fused_attention(network: torch.nn.Module) -> int:
    """Switch every fair-esm self-attention module of `network` to the fused kernel in place
    (the same weights, q/k/v held as one matrix), rotary
    frequencies in fp32; returns how many attention modules were switched."""
    keep_rotary_in_fp32(network)
    switched = 0
    for module in network.modules():
        if type(module) is MultiheadAttention and module.q_proj.bias is not None:
            fuse_projections(module)
            module.__class__ = FusedSelfAttention
            switched += 1
    return switched
