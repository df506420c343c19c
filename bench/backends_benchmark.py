"""The two backends side by side on this machine's CPU: the same random ESM-2 weights as a
fair-esm checkpoint and as a Hugging Face folder (converted by seqembed.demo_hf).

    .venv/bin/python bench/backends_benchmark.py [--sequences 600] [--layers 6 --width 320]

Reports per backend the model load (best of three, imports already done), tokens/s through
seqembed's batch loop (CPU budget, fp32, best of two) and the largest difference between the
two backends' embeddings. docs/benchmarks.md keeps the results.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from seqembed.compute.backends import load_backend  # noqa: E402
from seqembed.compute.batch_loop import embed_all  # noqa: E402
from seqembed.compute.batching import CPU_TOKS_PER_BATCH, fixed_budget  # noqa: E402
from seqembed.demo import random_protein, read_length, write_tiny_esm2  # noqa: E402
from seqembed.demo_hf import convert_esm2_checkpoint  # noqa: E402
from seqembed.fasta import FastaRecords  # noqa: E402


def best_of(runs: int, work) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=600)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=320)
    options = parser.parse_args()
    rng = random.Random(7)
    texts = [random_protein(rng, read_length(rng, 50, 600)) for _ in range(options.sequences)]
    records = FastaRecords([f"s{i}" for i in range(len(texts))], texts)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = write_tiny_esm2(
            Path(scratch), layers=options.layers, dim=options.width, heads=20, seed=3
        )
        folder = convert_esm2_checkpoint(checkpoint, Path(scratch) / "hf")
        results = {}
        settings = {"device": "cpu", "precision": "fp32", "truncation": 1022}
        for label, model in (("fair-esm", checkpoint), ("transformers", folder)):
            backend = load_backend(str(model), **settings)  # imports, first touch of the files
            load = best_of(3, lambda model=model: load_backend(str(model), **settings))
            layer = backend.num_layers
            budget = fixed_budget(CPU_TOKS_PER_BATCH)
            outcome = {}

            def run(backend=backend, layer=layer, budget=budget, outcome=outcome):
                outcome["result"] = embed_all(backend, records, [layer], budget, truncation=1022)

            seconds = best_of(2, run)
            result = outcome["result"]
            results[label] = (load, result.real_tokens / seconds, result.pooled["mean"][layer])
        difference = (results["fair-esm"][2] - results["transformers"][2]).abs().max().item()
    print(
        f"ESM-2 {options.layers} x {options.width}, {len(texts)} sequences, "
        f"{sum(map(len, texts)):,} residues, fp32 on the CPU"
    )
    for label, (load, rate, _) in results.items():
        print(f"  {label:<13} load {load:5.2f} s   {rate:9,.0f} tokens/s")
    ratio = results["transformers"][1] / results["fair-esm"][1]
    print(f"  transformers / fair-esm tokens/s: {ratio:.2f}; largest difference {difference:.1e}")


if __name__ == "__main__":
    main()
