"""ESM-2 on the CPU through oneDNN's packed products and 16-position batches, against
fair-esm's own model code in fp32 (the tolerances of the fused attention's test)."""

import argparse
import os
import random

import esm
import pytest
import torch
import torch.nn.functional as F

from seqembed.compute.backends.cpu_layers import (
    POSITION_MULTIPLE,
    ROW_STEP,
    PackedESM2,
    PackedLinear,
    PackedTransformerLayer,
    bucketed_rows,
    padded_positions,
)
from seqembed.compute.backends.esm import EsmBackend
from seqembed.demo import random_protein


def test_a_packed_product_is_torchs_linear_and_exact_gelu():
    generator = torch.Generator().manual_seed(2)
    weight, bias = torch.randn(96, 40, generator=generator), torch.randn(96, generator=generator)
    product, with_gelu = PackedLinear(weight, bias), PackedLinear(weight, bias, "gelu")
    for rows in (1, 7, 16, 130):  # the weight is packed once, for any number of rows
        x = torch.randn(rows, 40, generator=generator)
        expected = F.linear(x, weight, bias)
        assert (product(x) - expected).abs().max().item() <= 1e-4
        # fair-esm's GELU, x * 0.5 * (1 + erf(x / sqrt 2)), not the tanh approximation
        fair_gelu = expected * 0.5 * (1.0 + torch.erf(expected / 2**0.5))
        assert (with_gelu(x) - fair_gelu).abs().max().item() <= 1e-4
    assert product(torch.randn(3, 5, 40)).shape == (3, 5, 96)  # (T, B, E) as fair-esm's


def test_batches_are_padded_to_the_attention_kernels_multiple():
    tokens = torch.ones(3, 37, dtype=torch.long)
    padded = padded_positions(tokens, padding=1)
    assert padded.shape == (3, 48) and 48 % POSITION_MULTIPLE == 0
    aligned = torch.ones(2, 64, dtype=torch.long)
    assert padded_positions(aligned, padding=1) is aligned


def test_packed_layers_match_fair_esm_in_fp32(tiny_model):
    torch.serialization.add_safe_globals([argparse.Namespace])
    reference, alphabet = esm.pretrained.load_model_and_alphabet_local(str(tiny_model))
    backend = EsmBackend.load(str(tiny_model), device="cpu", precision="fp32", truncation=1022)
    assert backend.packed and type(backend.network) is PackedESM2
    layers = backend.network.layers
    assert all(type(layer) is PackedTransformerLayer for layer in layers)
    assert not hasattr(layers[0].self_attn, "q_proj")  # replaced, not kept twice
    rng = random.Random(5)
    # mixed lengths, none a multiple of 16: fair-esm's batch is shorter than seqembed's
    sequences = [random_protein(rng, length) for length in (5, 37, 61, 200, 130, 17)]
    _, _, tokens = alphabet.get_batch_converter(1022)(
        [(str(i), s) for i, s in enumerate(sequences)]
    )
    with torch.no_grad():
        expected = reference.eval()(tokens, repr_layers=[0, 1, 3])["representations"]
    # 6 x 208 positions, computed as 1,280 rows: padding rows are never read
    got = backend.forward(backend.prepare(sequences), [0, 1, 3], ("mean", "per_tok"))
    for layer in (0, 1, 3):  # the embedding, a middle layer, the last with its layer norm
        per_residue = got["per_tok"][layer]
        assert per_residue.shape == (6, 200, 32)  # the longest protein, not the padded batch
        for row, sequence in enumerate(sequences):
            fair = expected[layer][row, 1 : len(sequence) + 1]
            assert (per_residue[row, : len(sequence)] - fair).abs().max().item() <= 1e-5
            mean = got["mean"][layer][row]
            assert (mean - fair.mean(0)).abs().max().item() <= 1e-5


def test_batches_run_on_a_few_row_counts():
    counts = {rows: bucketed_rows(rows) for rows in range(1, 4097)}
    assert all(rows <= bucket <= rows * 1.125 + ROW_STEP for rows, bucket in counts.items())
    assert all(bucket % ROW_STEP == 0 for bucket in counts.values())
    # what oneDNN compiles a kernel for: 16 row counts up to 1,024, 8 per doubling past it
    assert len({counts[rows] for rows in range(1, 1025)}) == 16
    assert len(set(counts.values())) == 16 + 8 + 8
    # the batch budget's rows, as positions padded to 16 make them, waste little
    waste = [bucketed_rows(rows) / rows - 1 for rows in range(400, 1025, 16)]
    assert sum(waste) / len(waste) < 0.06


def test_the_products_of_many_batch_shapes_see_few_row_counts(tiny_model, monkeypatch):
    backend = EsmBackend.load(str(tiny_model), device="cpu", precision="bf16", truncation=1022)
    seen = set()
    product = PackedLinear.forward

    def counted(self, x):
        seen.add(x.shape[0])
        return product(self, x)

    monkeypatch.setattr(PackedLinear, "forward", counted)
    rng = random.Random(3)
    shapes = set()
    for _ in range(40):  # batches of 1-12 proteins of 20-500 residues: dozens of T x B
        batch = [random_protein(rng, rng.randint(20, 500)) for _ in range(rng.randint(1, 12))]
        tokens, lengths = backend.prepare(batch)
        shapes.add(tokens.numel())
        backend.forward((tokens, lengths), [3])
    assert len(shapes) > 30 and seen <= {bucketed_rows(n) for n in shapes}
    assert len(seen) <= 24


def test_bf16_packed_layers_stay_within_bf16s_error(tiny_model):
    rng = random.Random(7)
    sequences = [random_protein(rng, rng.randint(20, 300)) for _ in range(12)]
    means = {}
    for precision in ("fp32", "bf16"):
        backend = EsmBackend.load(
            str(tiny_model), device="cpu", precision=precision, truncation=1022
        )
        assert backend.packed
        means[precision] = backend.embed(sequences, [3])[3]
    relative = (means["bf16"] - means["fp32"]).norm(dim=1) / means["fp32"].norm(dim=1)
    assert 0 < relative.max().item() <= 0.02  # the documented bf16 bound (README, Precision)


def test_without_onednn_bf16_bf16_stays_on_torchs_dense_layers(tiny_model, monkeypatch):
    # a CPU before AVX-512 with `precision: bf16` set: oneDNN cannot compute bf16 there
    from seqembed.compute.backends import cpu_layers

    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "MKV" * 30]
    packed = EsmBackend.load(str(tiny_model), device="cpu", precision="bf16", truncation=1022)
    monkeypatch.setattr(cpu_layers, "onednn_bf16", lambda: False)
    dense = EsmBackend.load(str(tiny_model), device="cpu", precision="bf16", truncation=1022)
    assert packed.packed and not dense.packed
    assert not any(type(m) is PackedTransformerLayer for m in dense.network.modules())
    expected, got = packed.embed(sequences, [3])[3], dense.embed(sequences, [3])[3]
    assert ((got - expected).norm(dim=1) / expected.norm(dim=1)).max().item() <= 0.02
    fp16 = EsmBackend.load(str(tiny_model), device="cpu", precision="fp16", truncation=1022)
    assert not fp16.packed


def test_a_packed_network_refuses_attention_weights(tiny_model):
    backend = EsmBackend.load(str(tiny_model), device="cpu", precision="fp32", truncation=1022)
    tokens, _ = backend.prepare(["MKTAYIAKQR"])
    with pytest.raises(NotImplementedError, match="attention weights"):
        backend.network(tokens, return_contacts=True)


def test_loading_a_model_bounds_onednns_kernel_caches(monkeypatch):
    from seqembed.compute import backends

    for setting in backends.KERNEL_CACHES:
        monkeypatch.delenv(setting, raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "8")  # a user's own setting wins
    backends.bound_kernel_caches()
    # room for ESM-2's 16 row counts up to 1,024 rows, 4 products each, twice over
    assert backends.KERNEL_CACHE_ENTRIES >= 2 * 16 * 4
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(backends.KERNEL_CACHE_ENTRIES)
    assert os.environ["LRU_CACHE_CAPACITY"] == "8"
