"""seqembed against fair-esm's own extraction, side by side in one run, on the same corpus and
random-weight models with the shapes of real ESM-2s (35M: 12 layers x 480, 150M: 30 x 640,
650M: 33 x 1,280), on this machine's CPU.

    .venv/bin/python bench/cpu_benchmark.py [--shapes 35M 150M] [--workdir /tmp/seqembed-bench]

Per shape:
(a) the baseline (bench/fair_esm_baseline.py), once per file, as users run fair-esm's script
    (fp32, torch's default threads);
(b) the workflow end to end, `snakemake --cores 2 --resources gpu=2` with two CPU slots, in
    fp32 and in bf16 (what `precision: auto` resolves to here is printed);
and the useful work (the matrix products of the real tokens, attention included: 24 E^2 + 4
T E FLOPs per token and layer) per second, as a share of the bf16 and fp32 matrix-product
peak measured on the same cores (a 2,048^3 matmul). Prints a table per shape;
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

import torch  # noqa: E402

from seqembed.compute.backends import PROTEIN_ALPHABET  # noqa: E402
from seqembed.demo import file_sizes, write_fasta, write_tiny_esm2  # noqa: E402
from seqembed.fasta import read_fasta  # noqa: E402
from seqembed.precision import choose_precision  # noqa: E402

#: layers, width, heads of the released ESM-2s
SHAPES = {"35M": (12, 480, 20), "150M": (30, 640, 20), "650M": (33, 1280, 20)}


def make_corpus(folder: Path, files: int, largest: int, seed: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for number, count in enumerate(file_sizes(files, max(10, largest // 8), largest), start=1):
        path = folder / f"reads{number:02d}.fasta"
        write_fasta(path, f"reads{number:02d}", count, rng, lengths=(50, 600))
        paths.append(path)
    return paths


def run_with_rusage(command: list[str], **kwargs) -> tuple[str, float, float]:
    """stdout, wall seconds, peak RSS in MiB of the process itself."""
    started = time.time()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, **kwargs)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    return output, time.time() - started, usage.ru_maxrss / 1024


def baseline(model: Path, corpus: list[Path], out: Path) -> dict:
    totals = {
        "sequences": 0,
        "residues": 0,
        "real_tokens": 0,
        "computed_tokens": 0,
        "overhead_seconds": 0.0,
        "job_seconds": 0.0,
        "peak_rss_mb": 0.0,
    }
    started = time.time()
    for path in corpus:
        command = [
            sys.executable,
            str(REPO / "bench" / "fair_esm_baseline.py"),
            str(model),
            str(path),
            str(out / path.stem),
        ]
        output, wall, peak = run_with_rusage(command)
        figures = json.loads(output.strip().splitlines()[-1])
        for key in ("sequences", "residues", "real_tokens", "computed_tokens"):
            totals[key] += figures[key]
        totals["overhead_seconds"] += wall - figures["compute_seconds"] - figures["write_seconds"]
        totals["job_seconds"] += wall
        totals["peak_rss_mb"] = max(totals["peak_rss_mb"], peak)
    totals["wall_seconds"] = time.time() - started
    return totals


def workflow(model: Path, corpus_dir: Path, out: Path, precision: str) -> dict:
    command = [
        str(Path(sys.executable).with_name("snakemake")),
        "-s",
        str(REPO / "Snakefile"),
        "--cores",
        "2",
        "--resources",
        "gpu=2",
        "--quiet",
        "all",
        "--config",
        f"input_dir={corpus_dir}",
        f"output_dir={out}",
        f"model={model}",
        "device=cpu",
        "cpu_slots=2",
        "verbosity=quiet",
        f"precision={precision}",
        f"lock_dir={out.parent / 'locks'}",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    _, wall, _ = run_with_rusage(command, cwd=out.parent)
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    return {
        "sequences": sum(r["sequences"] for r in records),
        "residues": sum(r["residues"] for r in records),
        "real_tokens": sum(r["real_tokens"] for r in records),
        "computed_tokens": sum(r["computed_tokens"] for r in records),
        # what a file costs before its first batch: the job's interpreter and imports, and a
        # worker's start-up and model load where the file had to start one
        "overhead_seconds": sum(
            r["startup_seconds"] + (0 if r["model_was_loaded"] else r["worker_start_seconds"])
            for r in records
        ),
        "job_seconds": sum(r["startup_seconds"] + r["wall_seconds"] for r in records),
        "peak_rss_mb": max(max(r["peak_rss_mb"], r.get("worker_rss_mb", 0)) for r in records),
        "wall_seconds": wall,
    }


def matmul_peak(dtype: torch.dtype, size: int = 2048) -> float:
    """GFLOP/s of a size^3 matrix product on all of torch's threads: best of 5, after two
    warm-up runs (oneDNN's AMX kernels in bf16 on such a CPU)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def useful_flops(corpus: list[Path], layers: int, width: int) -> float:
    """The matrix products a forward pass needs for the real tokens (BOS, residues, EOS, cut
    at 1,024), padding left out: per token and layer 24 E^2 (q, k, v, out, the 4E-wide feed
    forward) and 4 T E (scores and their use over the T tokens of its sequence)."""
    total = 0.0
    for path in corpus:
        for sequence in read_fasta(path, PROTEIN_ALPHABET).sequences:
            tokens = min(len(sequence), 1022) + 2
            total += layers * tokens * (24 * width**2 + 4 * tokens * width)
    return total


def table(rows: dict[str, dict], flops: float, peaks: dict[str, float]) -> str:
    baseline = rows["fair-esm extraction (fp32)"]
    lines = [
        "| run | wall s | residues/s | vs fair-esm | useful GFLOP/s | of bf16 peak "
        "| of fp32 peak |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, result in rows.items():
        rate = flops / result["wall_seconds"] / 1e9
        lines.append(
            f"| {name} | {result['wall_seconds']:.1f} | "
            f"{result['residues'] / result['wall_seconds']:,.0f} | "
            f"{baseline['wall_seconds'] / result['wall_seconds']:.2f}x | {rate:,.0f} | "
            f"{rate / peaks['bf16']:.1%} | {rate / peaks['fp32']:.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/seqembed-bench"))
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=["35M", "150M"])
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument(
        "--largest",
        type=int,
        default=160,
        help="sequences in the largest file (35M; scaled down for larger shapes)",
    )
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    # the peak is sampled before every run and after the last, and the best sample counts: on
    # a shared host one sample ranged from a quarter of the best to all of it
    samples = {"bf16": [], "fp32": []}

    def sample_peaks() -> dict[str, float]:
        for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
            samples[name].append(matmul_peak(dtype))
        return {name: max(values) for name, values in samples.items()}

    peaks = sample_peaks()
    auto = choose_precision("auto", "cpu")
    print(f"{os.cpu_count()} CPU cores; precision auto here: {auto.precision} ({auto.reason})")
    for shape in args.shapes:
        layers, width, heads = SHAPES[shape]
        folder = args.workdir / shape
        model = write_tiny_esm2(folder / "model", layers=layers, dim=width, heads=heads, seed=0)
        # the same work per shape in about the same time: fewer sequences for wider models
        largest = max(10, args.largest * 480**2 * 12 // (width**2 * layers))
        corpus = make_corpus(folder / "corpus", args.files, largest)
        rows = {"fair-esm extraction (fp32)": baseline(model, corpus, folder / "baseline")}
        for precision in ("fp32", "bf16"):
            sample_peaks()
            rows[f"seqembed {precision}"] = workflow(
                model, folder / "corpus", folder / precision / "results", precision
            )
            assert (
                rows[f"seqembed {precision}"]["sequences"]
                == rows["fair-esm extraction (fp32)"]["sequences"]
            )
        flops = useful_flops(corpus, layers, width)
        peaks = sample_peaks()
        print(
            f"\nESM-2 {shape} shape ({layers} layers x {width}, random weights): {len(corpus)} "
            f"files, {rows['seqembed fp32']['sequences']} sequences, "
            f"{rows['seqembed fp32']['residues']:,} residues, "
            f"{flops / rows['seqembed fp32']['residues'] / 1e6:.0f} MFLOP per residue"
        )
        print(table(rows, flops, peaks), flush=True)
        print(
            "2,048^3 matmul peak, GFLOP/s, sampled before each run and after the last: "
            + "; ".join(
                f"{name} {', '.join(f'{value:,.0f}' for value in values)} (best {peaks[name]:,.0f})"
                for name, values in samples.items()
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
