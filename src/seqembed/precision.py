"""What `precision: auto` means on a device, and why: known without importing torch, so the
workflow decides it while it is read (the resolved value is the embed rule's param: fp32 and
bf16 outputs differ, so it is what makes an embedding stale) and a worker decides the same.

On a GPU, bf16 (the tensor cores, fp32's range). On a CPU, bf16 where the CPU has matrix
units for it: AMX tiles (Intel Xeon since Sapphire Rapids) or AVX-512 BF16 (Cooper Lake, AMD
Zen 4 and 5); oneDNN runs torch's bf16 matrix products on them at several times the fp32
rate (docs/benchmarks.md: 6.9x for a 2,048-wide matmul with AMX here, and the whole forward
pass 2-3x). Without them bf16 is converted to fp32 around every product and is slower than
fp32 itself, so auto stays fp32. The flags are read from /proc/cpuinfo (Linux; elsewhere
auto is fp32): the kernel lists a flag only where the CPU has it and the kernel enabled it,
AMX included (it needs the kernel's permission to use the tiles' state).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: /proc/cpuinfo flags of bf16 matrix units, the faster first, with the names users know
BF16_UNITS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))
CPUINFO = "/proc/cpuinfo"


@dataclass(frozen=True)
class PrecisionChoice:
    #: fp32, fp16 or bf16
    precision: str
    #: why, in words for the end-of-run table and summary.json
    reason: str


def cpu_flags(cpuinfo: str = CPUINFO) -> frozenset[str]:
    """The first processor's flags (all processors of a machine list the same)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as lines:
            for line in lines:
                name, _, value = line.partition(":")
                if name.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_unit(cpuinfo: str = CPUINFO) -> str | None:
    """The name of this CPU's bf16 matrix unit (AMX-BF16, AVX512-BF16), or None."""
    flags = cpu_flags(cpuinfo)
    return next((name for flag, name in BF16_UNITS if flag in flags), None)


def choose_precision(setting: str, device: str, cpuinfo: str = CPUINFO) -> PrecisionChoice:
    """`setting` (auto, fp32, fp16, bf16) on `device` (cuda..., cpu). An explicit choice is
    honoured; the GPU fallback from bf16 to fp16 on cards without bf16 (pre-Ampere) needs
    torch and is the backend's (seqembed.compute.backends.torch_dtype)."""
    if setting != "auto":
        return PrecisionChoice(setting, "set in the config")
    if device.startswith("cuda"):
        return PrecisionChoice("bf16", "auto: a GPU")
    unit = cpu_bf16_unit(cpuinfo)
    if unit:
        return PrecisionChoice("bf16", f"auto: this CPU has {unit}")
    where = "" if Path(cpuinfo).is_file() else f" ({cpuinfo} not readable)"
    return PrecisionChoice("fp32", f"auto: this CPU has no bf16 matrix unit{where}")
