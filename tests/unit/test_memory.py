"""The memory one sequence takes is measured on the device, not modelled: on the CPU through
the allocation events of torch's profiler (on a GPU, the same code reads the CUDA caching
allocator's peak; bench/gpu_benchmark.py checks it there)."""

import pytest
import torch

from seqembed.compute.backends.esm import EsmBackend, load_esm
from seqembed.compute.memory import fit_memory, measure_sequence_bytes
from seqembed.demo import write_tiny_esm2


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    # wide enough that activations are megabytes, not the profiler's rounding
    return write_tiny_esm2(tmp_path_factory.mktemp("wide"), layers=2, dim=256, heads=8, seed=1)


def test_two_probes_predict_the_peak_of_other_batches(wide_model):
    backend = EsmBackend.load(str(wide_model), device="cpu", precision="fp32", truncation=1022)
    fit = fit_memory(backend, [2])
    for tokens, sequences in [(256, 4), (700, 6), (1024, 4)]:
        measured = measure_sequence_bytes(backend, [2], tokens, sequences)
        assert measured == pytest.approx(fit.bytes_per_sequence(tokens), rel=0.1)


def test_the_measurement_sees_which_attention_kernel_runs(wide_model):
    # fused attention never stores the T x T scores; fair-esm's own attention does: a
    # formula would have to guess which one runs, the measurement knows
    fused = EsmBackend.load(str(wide_model), device="cpu", precision="fp32", truncation=1022)
    network, alphabet, name = load_esm(str(wide_model), "cpu", torch.float32)
    own = EsmBackend(network, alphabet, name, "cpu", torch.float32, 1022)
    fused_fit, own_fit = fit_memory(fused, [2]), fit_memory(own, [2])
    assert own_fit.quadratic > 20 * max(fused_fit.quadratic, 1.0)
    assert own_fit.bytes_per_sequence(1024) > 1.5 * fused_fit.bytes_per_sequence(1024)
