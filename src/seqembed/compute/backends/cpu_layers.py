"""ESM-2's layers on a CPU: matrix products through oneDNN with weights packed once at load,
bias and GELU inside the product, and batches as long as the attention kernel computes fastest.

Measured on this kind of CPU (docs/benchmarks.md, "The forward pass on the CPU"):
- torch's dense bf16 `linear` hands MKL the plain weight matrix on every call, and MKL lays it
  out for the matrix units again each time; oneDNN's packed weights (the ones torch.compile's
  CPU backend makes, `torch.ops.mkldnn`) are laid out once. With the bias and GELU applied
  inside the product, fair-esm's GELU (four passes over the 4E-wide activation) is gone too.
- torch's CPU flash-attention kernel runs its softmax in 16-float vectors and finishes each
  row's remainder one number at a time (libm's exp): a batch padded to a multiple of 16
  positions computes 1.2-2.3x faster than one a few positions shorter.
- oneDNN compiles a kernel (ms, about 0.7 MB) for every row count a product sees: ESM-2's
  network keeps each batch in one of a few row counts (PackedESM2, bucketed_rows), so a
  bounded cache holds them all (1.5x a worker that rebuilt them batch after batch).

fp32 stays within fair-esm's tolerances (1e-5, tests/unit/test_cpu_layers.py); bf16 within
bf16's. The dense weights are replaced, not copied: a packed network serves embeddings only
(fair-esm's attention-weight path, contacts, is not available in it; seqembed never asks).
"""

from __future__ import annotations

import torch
from esm.model.esm2 import ESM2
from esm.modules import TransformerLayer

from seqembed.compute.backends.attention import FusedSelfAttention

#: the dtypes oneDNN packs here; fp16 on a CPU stays on torch's dense path
PACKED_DTYPES = (torch.float32, torch.bfloat16)
#: positions per batch row are padded to a multiple of this on the CPU (the kernel's vector)
POSITION_MULTIPLE = 16
#: the rows (tokens) per product oneDNN's weight layout is chosen for: the CPU batch budget
ROWS_HINT = 512
#: an ESM-2 batch's products run on a multiple of this many rows up to 1,024 (of an eighth of
#: the power of two above, past that): oneDNN compiles a kernel per row count, ms each
ROW_STEP = 64


class PackedLinear(torch.nn.Module):
    """x W^T + b, then `activation` ("none" or "gelu", exact erf GELU as fair-esm's), in one
    oneDNN product over a weight packed once for this CPU."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none"):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT)
        self.bias = None if bias is None else bias.detach().clone()
        self.activation = activation
        # oneDNN's name of the GELU: exact (erf), not the tanh approximation
        self.algorithm = "none" if activation == "gelu" else ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            x, self.packed_weight, self.bias, self.activation, [], self.algorithm
        )

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, activation={self.activation}"


class PackedTransformerLayer(TransformerLayer):
    """fair-esm's pre-norm layer over packed products: fc1 carries the GELU, and the second
    residual is added in place into the layer's own new tensor (never into its input, which
    fair-esm keeps as the previous layer's representation)."""

    def forward(self, x, self_attn_mask=None, self_attn_padding_mask=None, need_head_weights=False):
        """fair-esm's call, (T, B, E) in and out: networks other than ESM2 (ESM-1b)."""
        if need_head_weights or self_attn_mask is not None:
            raise NotImplementedError(
                "attention weights and masks are not computed by seqembed's packed CPU layers"
            )
        length, batch, width = x.shape
        rows = self.forward_rows(x.reshape(-1, width), length, batch, self_attn_padding_mask)
        return rows.view(length, batch, width), None

    def forward_rows(self, rows: torch.Tensor, length: int, batch: int, key_padding_mask=None):
        """The layer over `rows` [R, E]: the batch's T x B positions first, then any padding
        rows up to a row count of bucketed_rows (computed and never read)."""
        positions = length * batch
        attention = self.self_attn
        qkv = attention.qkv(self.self_attn_layer_norm(rows))
        heads = attention.attend(qkv[:positions], length, batch, key_padding_mask)
        attended = rows.new_empty(rows.shape)
        attended[positions:].zero_()
        # (B, H, T, d) -> the rows' (T, B, H, d), in the copy the product needs anyway
        attended[:positions].view(length, batch, *heads.shape[1::2]).copy_(
            heads.permute(2, 0, 1, 3)
        )
        x = rows + attention.out_proj(attended)
        x.add_(self.fc2(self.fc1(self.final_layer_norm(x))))
        return x


class PackedESM2(ESM2):
    """fair-esm's ESM2.forward for embeddings (no logits, no contacts) over layers that keep
    the batch as rows padded to bucketed_rows: the products of a run see a few row counts,
    and oneDNN compiles a few kernels, where T x B took dozens of values and a bounded kernel
    cache rebuilt kernels all night (docs/benchmarks.md, "Row counts")."""

    def forward(self, tokens, repr_layers=(), need_head_weights=False, return_contacts=False):
        if need_head_weights or return_contacts:
            raise NotImplementedError(
                "attention weights and contacts are not computed by seqembed's packed CPU layers"
            )
        batch, length = tokens.shape
        padding_mask = tokens.eq(self.padding_idx)
        x = self.embed_scale * self.embed_tokens(tokens)
        if self.token_dropout:  # as fair-esm scales for the masking of its training
            x.masked_fill_((tokens == self.mask_idx).unsqueeze(-1), 0.0)
            observed = (tokens == self.mask_idx).sum(-1).to(x.dtype) / (~padding_mask).sum(-1)
            x = x * (1 - 0.15 * 0.8) / (1 - observed)[:, None, None]
        x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        hidden = {0: x} if 0 in repr_layers else {}
        positions = length * batch
        rows = x.new_zeros(bucketed_rows(positions), self.embed_dim)
        rows[:positions].view(length, batch, -1).copy_(x.transpose(0, 1))
        key_padding_mask = padding_mask if padding_mask.any() else None
        for number, layer in enumerate(self.layers, start=1):
            rows = layer.forward_rows(rows, length, batch, key_padding_mask)
            if number in repr_layers:
                hidden[number] = rows[:positions].view(length, batch, -1).transpose(0, 1)
        if self.num_layers in repr_layers:
            last = self.emb_layer_norm_after(rows[:positions])
            hidden[self.num_layers] = last.view(length, batch, -1).transpose(0, 1)
        return {"representations": hidden}


def bucketed_rows(rows: int) -> int:
    """`rows` rounded up to a multiple of ROW_STEP up to 1,024, of 128 up to 2,048 and so on:
    16 row counts up to 1,024 and 8 per doubling past it, 3-6 % more rows on average."""
    step = max(ROW_STEP, 1 << max((rows - 1).bit_length() - 4, 0))
    return -(-rows // step) * step


def packing_available(dtype: torch.dtype) -> bool:
    """oneDNN in this torch, and for bf16 a CPU oneDNN computes it on (AVX-512 at least: on an
    older CPU `precision: bf16` stays on torch's dense path, which converts around each
    product; `auto` is fp32 there)."""
    if dtype not in PACKED_DTYPES or not torch.backends.mkldnn.is_available():
        return False
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    return dtype != torch.bfloat16 or onednn_bf16()


def onednn_bf16() -> bool:
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def pack_layers(network: torch.nn.Module) -> int:
    """Switch the fused-attention ESM-2 layers of a CPU `network` to packed products in place;
    returns how many layers were switched."""
    switched = 0
    for layer in network.modules():
        if type(layer) is not TransformerLayer or type(layer.self_attn) is not FusedSelfAttention:
            continue
        attention = layer.self_attn
        qkv = PackedLinear(attention.qkv.weight, attention.qkv.bias)
        out = PackedLinear(attention.out_proj.weight, attention.out_proj.bias)
        fc1 = PackedLinear(layer.fc1.weight, layer.fc1.bias, activation="gelu")
        fc2 = PackedLinear(layer.fc2.weight, layer.fc2.bias)
        attention.qkv, attention.out_proj, layer.fc1, layer.fc2 = qkv, out, fc1, fc2
        # q/k/v's own views only served fair-esm's attention-weight path
        del attention.q_proj, attention.k_proj, attention.v_proj
        layer.__class__ = PackedTransformerLayer
        switched += 1
    if type(network) is ESM2 and switched == len(network.layers):
        network.__class__ = PackedESM2
    return switched


def pack_linear_layers(network: torch.nn.Module) -> int:
    """Every nn.Linear of a CPU `network` (transformers' own model classes) as a packed
    product, in place; the model's code applies its activations itself. Returns how many."""
    switched = 0
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(parent, name, PackedLinear(child.weight, child.bias))
                switched += 1
    return switched


def padded_positions(tokens: torch.Tensor, padding: int) -> torch.Tensor:
    """`tokens` [B, T] with padding columns up to a multiple of POSITION_MULTIPLE: masked
    keys that no residue attends to and no mean includes."""
    extra = -tokens.shape[1] % POSITION_MULTIPLE
    if not extra:
        return tokens
    return torch.nn.functional.pad(tokens, (0, extra), value=padding)
