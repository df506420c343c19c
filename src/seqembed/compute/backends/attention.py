"""fair-esm's self-attention through torch's fused scaled_dot_product_attention.

fair-esm computes attention as two batched matrix products around a separate fp32 softmax,
materialising every T x T score matrix; the fused kernel (FlashAttention / memory-efficient
on a GPU, a tiled kernel on the CPU) computes the same softmax(q k^T) v without storing it.
Same projections, same rotary embedding, same key-padding mask: the results agree with
fair-esm's to fp32 rounding (tested). Attention weights are never needed here (no contact
prediction), so the fused path serves every call that does not ask for them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from esm.multihead_attention import MultiheadAttention
from esm.rotary_embedding import RotaryEmbedding, apply_rotary_pos_emb


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
        heads, head_width = self.num_heads, self.head_dim

        def split(x: torch.Tensor) -> torch.Tensor:  # (T, B, E) -> (B*H, T, d)
            return x.contiguous().view(length, batch * heads, head_width).transpose(0, 1)

        q = split(self.q_proj(query) * self.scaling)
        k = split(self.k_proj(query))
        v = split(self.v_proj(query))
        if self.rot_emb:
            # the tables in fp32 (see keep_rotary_in_fp32), rounded once to q's precision
            cos, sin = self.rot_emb._update_cos_sin_tables(k, seq_dimension=-2)
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)
            q, k = apply_rotary_pos_emb(q, cos, sin), apply_rotary_pos_emb(k, cos, sin)
        mask = None
        if key_padding_mask is not None:
            # True = may attend; one row per sequence, broadcast over heads and queries
            mask = ~key_padding_mask.view(batch, 1, 1, length).to(torch.bool)
        out = F.scaled_dot_product_attention(
            q.view(batch, heads, length, head_width),
            k.view(batch, heads, length, head_width),
            v.view(batch, heads, length, head_width),
            attn_mask=mask,
            scale=1.0,  # q is already scaled, as in fair-esm
        )
        # (B, H, T, d) -> (T, B, H*d); CUDA's memory-efficient kernel returns a transposed,
        # non-contiguous layout, so reshape rather than view
        out = out.permute(2, 0, 1, 3).reshape(length, batch, width)
        return self.out_proj(out), None


def keep_rotary_in_fp32(network: torch.nn.Module) -> None:
    """fair-esm builds rotary positions as `arange(T).type_as(inv_freq)`: in a bf16 model
    positions above 256 are rounded (0..1023 collapse to 513 values), so long sequences get
    wrong angles. The frequencies stay fp32; the fused attention casts the tables once."""
    for module in network.modules():
        if isinstance(module, RotaryEmbedding):
            module.inv_freq = module.inv_freq.float()
            module._seq_len_cached = None


def use_fused_attention(network: torch.nn.Module) -> int:
    """Switch every fair-esm self-attention module of `network` to the fused kernel in place
    (weights untouched), rotary frequencies in fp32; returns how many were switched."""
    keep_rotary_in_fp32(network)
    switched = 0
    for module in network.modules():
        if type(module) is MultiheadAttention:
            module.__class__ = FusedSelfAttention
            switched += 1
    return switched
