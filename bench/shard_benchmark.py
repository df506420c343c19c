"""One large file on one or two CPU slots, whole and in shards, and the gather's memory.

    .venv/bin/python bench/shard_benchmark.py [--sequences 6000] [--workdir /tmp/seqembed-shards]

(a) Wall time of `snakemake --cores 2` over one FASTA file of N sequences (100-400 residues)
    with a random 6-layer, 320-wide ESM-2: one slot and two, the file whole and in 2 or 4
    shards (shard_size = size / shards), each from a fresh output folder, the runs of one
    configuration alternating with the others so that machine noise spreads evenly.
(b) The gather's peak RSS for a file ten times the shard size: ten shard outputs with
    per-residue rows (h5, then pt) joined by seqembed.compute.gather in a fresh process,
    against the output's size and against a process that only imports what the gather does.
docs/benchmarks.md keeps the results.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from seqembed.demo import random_protein, write_tiny_esm2  # noqa: E402

#: (slots, shards): shards 1 = the whole file
RUNS = [(1, 1), (2, 1), (2, 2), (2, 4), (1, 4)]
#: the gather's measurement: a child process that joins `shards` and reports its peak RSS
GATHER = """
import json, sys, time
import h5py, torch
from seqembed.compute.gather import gather
shards, output, output_format = json.loads(sys.argv[1])
started = time.time()
if shards:
    temporary, _ = gather(shards, output, output_format)
    temporary.rename(output)
# VmHWM: this process's own peak (ru_maxrss keeps the parent's across fork and exec)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM:"))
print(json.dumps({"seconds": time.time() - started, "peak_rss_mb": peak_kb / 1024}))
"""


def big_fasta(path: Path, sequences: int, seed: int = 5) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for index in range(sequences):
            handle.write(f">p{index}\n{random_protein(rng, rng.randint(100, 400))}\n")
    return path


def run(workdir: Path, fasta: Path, model: Path, slots: int, shards: int) -> tuple[float, dict]:
    output = workdir / f"results-{slots}-{shards}"
    shutil.rmtree(output, ignore_errors=True)
    shard_size = fasta.stat().st_size // shards + 1 if shards > 1 else 0
    command = [
        str(Path(sys.executable).with_name("snakemake")),
        *("-s", str(REPO / "Snakefile"), "--cores", "2", "--resources", f"gpu={slots}"),
        *("--config", f"input_dir={fasta.parent}", f"output_dir={output}", f"model={model}"),
        *("device=cpu", f"cpu_slots={slots}", f"shard_size={shard_size}", "verbosity=quiet"),
        f"lock_dir={workdir / 'locks'}",
    ]
    started = time.time()
    subprocess.run(command, cwd=workdir, check=True, capture_output=True)
    wall = time.time() - started
    return wall, json.loads((output / "summary.json").read_text())


def shard_outputs(folder: Path, output_format: str, shards: int, sequences: int) -> list[str]:
    """Shard outputs as the embed jobs write them, with random per-residue rows."""
    import torch

    from seqembed.compute.writers import open_writer

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    generator = torch.Generator().manual_seed(1)
    for shard in range(shards):
        lengths = [250] * sequences
        request = {
            "name": f"shard{shard}",
            "ids": [f"s{shard}_{i}" for i in range(sequences)],
            "sequences": ["M" * length for length in lengths],
            "output": str(folder / f"{shard}.{output_format}"),
            "truncation": 1022,
            "include": ["mean", "per_tok"],
            "output_format": output_format,
        }
        meta = {"model": "random", "truncation": 1022, "source": "big.faa"}
        writer = open_writer(request, [6], 320, meta)
        for first in range(0, sequences, 50):
            rows = torch.randn(min(50, sequences - first), 250, 320, generator=generator)
            positions = [[first + i] for i in range(rows.shape[0])]
            writer.residues(positions, {6: rows})
        temporary = writer.finish({"mean": {6: torch.randn(sequences, 320, generator=generator)}})
        temporary.rename(request["output"])
        paths.append(request["output"])
    return paths


def gather_memory(folder: Path, output_format: str, shards: list[str]) -> dict:
    output = folder / f"joined.{output_format}"
    measured = subprocess.run(
        [sys.executable, "-c", GATHER, json.dumps([shards, str(output), output_format])],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    figures = json.loads(measured.stdout)
    figures["output_mb"] = output.stat().st_size / 2**20 if shards else 0.0
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/seqembed-shards"))
    parser.add_argument("--sequences", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shard-sequences", type=int, default=200)
    parser.add_argument("--gather-only", action="store_true", help="(b) alone")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    if not args.gather_only:
        runs(args)
    gathers(args)


def runs(args) -> None:
    model = write_tiny_esm2(args.workdir / "model", layers=6, dim=320, heads=20, seed=1)
    fasta = big_fasta(args.workdir / "fasta" / "big.fasta", args.sequences)
    walls: dict[tuple[int, int], list[float]] = {key: [] for key in RUNS}
    summaries = {}
    for _ in range(args.repeats):
        for slots, shards in RUNS:
            wall, summary = run(args.workdir, fasta, model, slots, shards)
            walls[(slots, shards)].append(wall)
            summaries[(slots, shards)] = summary
    baseline = min(walls[(1, 1)])
    print(f"one file of {args.sequences} sequences, {fasta.stat().st_size / 1e6:.1f} MB:")
    print("| slots | shards | wall s (best of runs) | speed-up | device utilisation |")
    print("| --- | --- | --- | --- | --- |")
    for (slots, shards), times in walls.items():
        utilisation = summaries[(slots, shards)]["utilisation"]
        print(
            f"| {slots} | {shards} | {min(times):.1f} ({', '.join(f'{t:.1f}' for t in times)}) "
            f"| {baseline / min(times):.2f}x | {utilisation:.0%} |"
        )


def gathers(args) -> None:
    print(f"\nthe gather of 10 shards of {args.shard_sequences} sequences x 250 residues x 320:")
    print("| format | output MB | peak RSS MB | imports alone MB | seconds |")
    print("| --- | --- | --- | --- | --- |")
    for output_format in ("h5", "pt"):
        folder = args.workdir / f"gather-{output_format}"
        shards = shard_outputs(folder, output_format, 10, args.shard_sequences)
        imports = gather_memory(folder, output_format, [])
        joined = gather_memory(folder, output_format, shards)
        print(
            f"| {output_format} | {joined['output_mb']:,.0f} | {joined['peak_rss_mb']:,.0f} "
            f"| {imports['peak_rss_mb']:,.0f} | {joined['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
