"""Reading compressed inputs and writing per-residue outputs, on this machine's CPU.

    .venv/bin/python bench/io_benchmark.py [--megabytes 60] [--residues 100000]

(a) the plan's pass over the inputs (seqembed.fasta.fasta_stats) in MB/s of uncompressed
    FASTA: plain, gzip through python-isal (what seqembed uses), gzip through the standard
    library (the fallback), and line-by-line reading of the standard library's gzip (what a
    naive reader does); also the embed job's full parse (read_fasta) plain and gzip;
(b) a job's peak memory against the residues in its file: one process per case embeds a file
    of N and of 10 N residues with per-residue output (a random ESM-2 of 2 layers x 320, the
    width of ESM-2 8M), as .h5 (streamed) and .pt (built in memory), float32 and float16;
    peak RSS (ru_maxrss) and the output's size on disk.
docs/benchmarks.md keeps the results.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from seqembed import compression  # noqa: E402
from seqembed.compute.backends import PROTEIN_ALPHABET  # noqa: E402
from seqembed.demo import random_protein, write_tiny_esm2  # noqa: E402
from seqembed.fasta import fasta_stats, read_fasta  # noqa: E402


def write_proteins(path: Path, residues: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with open(path, "w") as handle:
        written = index = 0
        while written < residues:
            length = min(rng.randint(50, 600), residues - written)
            sequence = random_protein(rng, length)
            handle.write(f">p{index} predicted protein\n")
            for start in range(0, length, 60):
                handle.write(sequence[start : start + 60] + "\n")
            written += length
            index += 1


def megabytes_per_second(size: int, run) -> float:
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return size / best / 1e6


def naive_gzip_stats(path: Path) -> int:
    count = 0
    with gzip.open(path, "rb") as handle:
        for line in handle:
            count += line.startswith(b">")
    return count


def reading(folder: Path, megabytes: int) -> dict:
    plain = folder / "proteins.faa"
    write_proteins(plain, megabytes * 800_000)  # ~1.25 bytes per residue with headers
    packed = folder / "proteins.faa.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=6))
    size = plain.stat().st_size
    figures = {"uncompressed_mb": size / 1e6, "compressed_mb": packed.stat().st_size / 1e6}
    figures["plan_plain"] = megabytes_per_second(size, lambda: fasta_stats(plain))
    figures["plan_gzip_isal"] = megabytes_per_second(size, lambda: fasta_stats(packed))
    fast = compression._gzip
    compression._gzip = gzip
    try:
        figures["plan_gzip_stdlib"] = megabytes_per_second(size, lambda: fasta_stats(packed))
    finally:
        compression._gzip = fast
    figures["naive_gzip_lines"] = megabytes_per_second(size, lambda: naive_gzip_stats(packed))
    figures["parse_plain"] = megabytes_per_second(size, lambda: read_fasta(plain, PROTEIN_ALPHABET))
    figures["parse_gzip_isal"] = megabytes_per_second(
        size, lambda: read_fasta(packed, PROTEIN_ALPHABET)
    )
    return figures


#: one process per case: its ru_maxrss is that case's peak alone
CASE = """
import json, resource, sys, time
sys.path.insert(0, {src!r})
from seqembed.compute.backends.esm import EsmBackend
from seqembed.compute.embed_file import embed_file
from seqembed.compute.backends import PROTEIN_ALPHABET
from seqembed.fasta import read_fasta
records = read_fasta({fasta!r}, PROTEIN_ALPHABET)
backend = EsmBackend.load({model!r}, device="cpu", precision="fp32", truncation=1022)
started = time.time()
stats = embed_file(backend, dict(name="bench", ids=records.ids, sequences=records.sequences,
    output={output!r}, layers="last", toks_per_batch=8192, truncation=1022,
    output_layout="default", include=["mean", "per_tok"], output_format={fmt!r},
    store_float16={half!r}))
import os
print(json.dumps(dict(rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    seconds=time.time() - started, size_mb=os.path.getsize(stats["temporary"]) / 1e6)))
"""


def memory(folder: Path, residues: int) -> list[dict]:
    model = write_tiny_esm2(folder / "model", layers=2, dim=320, heads=20, seed=2)
    rows = []
    for scale in (1, 10):
        fasta = folder / f"x{scale}.faa"
        write_proteins(fasta, residues * scale, seed=scale)
        for fmt, half in (("h5", []), ("h5", ["per_tok"]), ("pt", [])):
            code = CASE.format(
                src=str(REPO / "src"),
                fasta=str(fasta),
                model=str(model),
                output=str(folder / f"out-x{scale}.{fmt}"),
                fmt=fmt,
                half=half,
            )
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"residues": residues * scale, "format": fmt, "float16": bool(half)})
            rows[-1].update(figures)
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=60)
    parser.add_argument("--residues", type=int, default=100_000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        figures = reading(folder, options.megabytes)
        print(
            f"inputs: {figures['uncompressed_mb']:.0f} MB plain, "
            f"{figures['compressed_mb']:.0f} MB gzip -6"
        )
        for key in (
            "plan_plain",
            "plan_gzip_isal",
            "plan_gzip_stdlib",
            "naive_gzip_lines",
            "parse_plain",
            "parse_gzip_isal",
        ):
            print(f"  {key:<18} {figures[key]:7.0f} MB/s of uncompressed FASTA")
        print("per-residue output, peak RSS against residues (ESM-2 2 x 320, last layer):")
        print(
            f"  {'residues':>9} {'format':<7} {'dtype':<8} {'peak RSS MB':>11} "
            f"{'output MB':>9} {'seconds':>7}"
        )
        for row in memory(folder, options.residues):
            dtype = "float16" if row["float16"] else "float32"
            print(
                f"  {row['residues']:>9,} {row['format']:<7} {dtype:<8} "
                f"{row['rss_mb']:>11.0f} {row['size_mb']:>9.0f} {row['seconds']:>7.1f}"
            )


if __name__ == "__main__":
    main()
