"""seqembed against fair-esm's own extraction, side by side in one run, on the same corpus and
the same random-weight model with the shape of a real ESM-2 (35M: 12 layers, 480 wide, 20
heads), on this machine's CPU.

    .venv/bin/python bench/cpu_benchmark.py [--workdir /tmp/seqembed-bench]

(a) the workflow end to end: `snakemake --cores 2 --resources gpu=2`, two CPU jobs at once;
(b) the baseline (bench/fair_esm_baseline.py), once per file, as users run fair-esm's script.
Prints a table of figures and ratios; docs/benchmarks.md keeps the results.
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

from seqembed.demo import file_sizes, write_fasta, write_tiny_esm2  # noqa: E402


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


def workflow(model: Path, corpus_dir: Path, out: Path) -> dict:
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
    ]
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


def table(results: dict[str, dict]) -> str:
    rows = [
        ("sequences/s", lambda r: r["sequences"] / r["wall_seconds"], "{:.2f}"),
        ("residues/s", lambda r: r["residues"] / r["wall_seconds"], "{:,.0f}"),
        ("padding efficiency", lambda r: r["real_tokens"] / r["computed_tokens"], "{:.3f}"),
        (
            "import+load share of job time",
            lambda r: r["overhead_seconds"] / r["job_seconds"],
            "{:.1%}",
        ),
        ("peak RSS per process (MiB)", lambda r: r["peak_rss_mb"], "{:,.0f}"),
        ("wall seconds", lambda r: r["wall_seconds"], "{:.1f}"),
    ]
    names = list(results)
    lines = [
        "| figure | " + " | ".join(names) + " | seqembed / baseline |",
        "| --- |" + " --- |" * (len(names) + 1),
    ]
    for label, figure, style in rows:
        values = [figure(results[name]) for name in names]
        ratio = values[0] / values[1] if values[1] else float("nan")
        lines.append(
            f"| {label} | " + " | ".join(style.format(v) for v in values) + f" | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/seqembed-bench"))
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--largest", type=int, default=160, help="sequences in the largest file")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    model = write_tiny_esm2(args.workdir / "model", layers=12, dim=480, heads=20, seed=0)
    corpus = make_corpus(args.workdir / "corpus", args.files, args.largest)
    (args.workdir / "run").mkdir()
    results = {
        "seqembed": workflow(model, args.workdir / "corpus", args.workdir / "run" / "results"),
        "fair-esm baseline": baseline(model, corpus, args.workdir / "baseline"),
    }
    assert results["seqembed"]["sequences"] == results["fair-esm baseline"]["sequences"]
    print(
        f"corpus: {len(corpus)} files, {results['seqembed']['sequences']} sequences, "
        f"{results['seqembed']['residues']:,} residues; model: ESM-2 35M shape, random "
        f"weights; {os.cpu_count()} CPU cores"
    )
    print(table(results))


if __name__ == "__main__":
    main()
