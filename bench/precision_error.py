"""What bf16 costs in accuracy on the CPU: the relative L2 distance of each sequence's mean
embedding in bf16 from the same in fp32, through seqembed's ESM-2 backend (the code a run
uses, its batches included), on the demo's model and files and on a random-weight model of
ESM-2 650M's shape (33 layers x 1,280, 20 heads).

    .venv/bin/python bench/precision_error.py [--sequences 40] [--workdir /tmp/seqembed-precision]

Prints median, 99th percentile and largest relative error per model; docs/benchmarks.md and
the README keep them. Random weights are what can be had here (no downloads): trained
weights have other activation scales, so the figures bound the rounding, not a model's
behaviour.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from seqembed.compute.backends.esm import PROTEIN_ALPHABET, EsmBackend  # noqa: E402
from seqembed.demo import random_protein, write_demo, write_tiny_esm2  # noqa: E402
from seqembed.fasta import read_fasta  # noqa: E402


def means(model: Path, sequences: list[str], precision: str) -> torch.Tensor:
    backend = EsmBackend.load(str(model), device="cpu", precision=precision, truncation=1022)
    layer = backend.num_layers
    # by length, so that a batch is not padded to its one long protein (the demo's files run
    # to thousands of residues); both precisions see the same batches
    rows = []
    for start in range(0, len(sequences), 64):
        rows.append(backend.embed(sequences[start : start + 64], [layer])[layer])
    return torch.cat(rows)


def errors(model: Path, sequences: list[str]) -> str:
    exact, half = means(model, sequences, "fp32"), means(model, sequences, "bf16")
    relative = ((half - exact).norm(dim=1) / exact.norm(dim=1)).sort().values
    p99 = relative[int(0.99 * (len(relative) - 1))].item()
    return (
        f"{len(sequences):,} | {relative.median().item():.2e} | {p99:.2e} | "
        f"{relative.max().item():.2e} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/seqembed-precision"))
    parser.add_argument("--sequences", type=int, default=40, help="for the 650M shape")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    torch.set_num_threads(2)
    print("| model | sequences | median | 99th percentile | largest |")
    print("| --- | --- | --- | --- | --- |")
    demo_model, files = write_demo(args.workdir / "demo")
    demo = sorted(
        (s for path in files for s in read_fasta(path, PROTEIN_ALPHABET).sequences), key=len
    )
    print(f"| the demo (4 layers x 64) | {errors(demo_model, demo)}", flush=True)
    big = write_tiny_esm2(args.workdir / "650M", layers=33, dim=1280, heads=20, seed=0)
    rng = random.Random(11)
    proteins = sorted(
        (random_protein(rng, rng.randint(50, 1000)) for _ in range(args.sequences)), key=len
    )
    print(f"| ESM-2 650M shape, random weights | {errors(big, proteins)}", flush=True)


if __name__ == "__main__":
    main()
