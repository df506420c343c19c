"""What `precision: auto` means: bf16 on a GPU and on a CPU with bf16 matrix units, fp32 on
other CPUs, decided from /proc/cpuinfo without torch, and why (seqembed.precision)."""

from __future__ import annotations

import pytest
import torch

from seqembed.compute.backends import torch_dtype
from seqembed.compute.backends.esm import EsmBackend
from seqembed.precision import choose_precision, cpu_bf16_unit, cpu_flags

# a Sapphire Rapids core's flags, shortened; a Zen 4's; an older Xeon's (Skylake: AVX-512,
# no bf16)
SAPPHIRE_RAPIDS = "fpu vme sse sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
ZEN4 = "fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni"
SKYLAKE = "fpu sse2 avx2 avx512f avx512bw avx512vl"


def cpuinfo(tmp_path, flags: str) -> str:
    """Two processors, as the kernel lists them."""
    block = f"processor\t: {{n}}\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\nbugs\t\t: \n\n"
    path = tmp_path / "cpuinfo"
    path.write_text(block.format(n=0) + block.format(n=1))
    return str(path)


@pytest.mark.parametrize(
    ("flags", "precision", "reason"),
    [
        (SAPPHIRE_RAPIDS, "bf16", "auto: this CPU has AMX-BF16"),
        (ZEN4, "bf16", "auto: this CPU has AVX512-BF16"),
        (SKYLAKE, "fp32", "auto: this CPU has no bf16 matrix unit"),
    ],
)
def test_auto_on_the_cpu_follows_its_bf16_units(tmp_path, flags, precision, reason):
    choice = choose_precision("auto", "cpu", cpuinfo(tmp_path, flags))
    assert (choice.precision, choice.reason) == (precision, reason)


def test_auto_is_fp32_where_the_cpu_cannot_be_read(tmp_path):
    missing = str(tmp_path / "no-cpuinfo")
    choice = choose_precision("auto", "cpu", missing)
    assert choice.precision == "fp32"
    assert missing in choice.reason
    assert cpu_flags(missing) == frozenset()


def test_an_explicit_choice_and_a_gpu_do_not_look_at_the_cpu(tmp_path):
    skylake = cpuinfo(tmp_path, SKYLAKE)
    assert choose_precision("bf16", "cpu", skylake).reason == "set in the config"
    assert choose_precision("fp32", "cpu", cpuinfo(tmp_path, ZEN4)).precision == "fp32"
    assert choose_precision("auto", "cuda:1", skylake).precision == "bf16"


def test_this_machine_is_read_as_torch_reads_it():
    """The kernel's flags against torch's own CPU detection (cpuinfo, through CPUID): the
    workflow, which never imports torch, decides what the worker would."""
    torch_sees = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert (cpu_bf16_unit() is not None) == torch_sees


def test_the_backend_computes_in_what_auto_chose_and_says_why(tiny_model):
    expected = choose_precision("auto", "cpu")
    backend = EsmBackend.load(str(tiny_model), device="cpu", precision="auto", truncation=1022)
    assert backend.dtype == {"bf16": torch.bfloat16, "fp32": torch.float32}[expected.precision]
    assert backend.precision_reason == expected.reason
    assert next(backend.network.parameters()).dtype == backend.dtype
    assert torch_dtype("fp16", "cpu") == (torch.float16, "set in the config")


def test_cpu_batches_hold_fewer_tokens_in_half_precision(tiny_model):
    """bf16 on the CPU ran fastest with 512-token batches, fp32 with 1,024
    (docs/benchmarks.md); an explicit toks_per_batch is honoured either way."""
    from seqembed.compute.embed_file import batch_budget

    budgets = {}
    for precision in ("fp32", "bf16"):
        backend = EsmBackend.load(
            str(tiny_model), device="cpu", precision=precision, truncation=1022
        )
        budgets[precision] = batch_budget("auto", backend, [3])(300)
        assert batch_budget(2000, backend, [3])(300) == 2000
    assert budgets == {"fp32": 1024, "bf16": 512}
