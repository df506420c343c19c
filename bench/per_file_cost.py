"""What one more input file costs, and where a run's device time goes, on this machine's CPU.

    .venv/bin/python bench/per_file_cost.py [--counts 50 500] [--modes resident per_file]
        [--bundle-sizes 0 50] [--snakemake-arg=--scheduler-subsample=0] [--demo]
        [--workdir /tmp/seqembed-per-file]

(a) marginal cost: for each count N, N tiny files (3 short sequences each) through
    `snakemake --cores 2 --resources gpu=2` with the demo's model and two CPU slots, as a user
    types it (the workflow's profile applies); the marginal wall time of one more file is
    (T(N2) - T(N1)) / (N2 - N1) between consecutive counts. Also how far the start order
    moved from the priorities (largest file first): the mean and 95th percentile of
    |start rank - size rank| / N, from the records' start times;
--dry-run instead times `snakemake --dry-run` (the DAG of N files, nothing run) per count;
(b) with --demo, the demo set (`python -m seqembed.demo`): wall time, device utilisation,
    start-up and model-load share, models loaded, from summary.json.
--bundle-sizes runs (a) or the dry runs once per bundle_size (0: one job per file, the default).
--snakemake-arg adds an argument to every run (repeat it), e.g. to compare scheduler settings.
docs/benchmarks.md keeps the results.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from seqembed.demo import random_protein, write_demo  # noqa: E402

MODES = ("resident", "per_file")


def tiny_files(folder: Path, count: int, seed: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for index in range(count):
        records = "".join(f">s{i}\n{random_protein(rng, rng.randint(20, 60))}\n" for i in range(3))
        (folder / f"tiny{index:05d}.fasta").write_text(records)
    return folder


def run(
    workdir: Path,
    inputs: Path,
    model: Path,
    mode: str,
    extra: list[str],
    dry: bool = False,
    bundle_size: int = 0,
) -> tuple[float, Path]:
    """Wall seconds of one `snakemake` run from start to exit, and its output folder."""
    output = workdir / f"results-{inputs.name}-{mode}-{bundle_size}"
    shutil.rmtree(output, ignore_errors=True)
    command = [
        str(Path(sys.executable).with_name("snakemake")),
        *("-s", str(REPO / "Snakefile"), "--cores", "2", "--resources", "gpu=2", *extra),
        *("--config", f"input_dir={inputs}", f"output_dir={output}", f"model={model}"),
        *("device=cpu", "cpu_slots=2", f"worker={mode}", "verbosity=quiet"),
        f"lock_dir={workdir / 'locks'}",
        f"bundle_size={bundle_size}",
    ]
    if dry:
        command.insert(1, "--dry-run")
    started = time.time()
    subprocess.run(command, cwd=workdir, check=True, capture_output=True)
    return time.time() - started, output


def order_displacement(inputs: Path, output: Path) -> tuple[float, float]:
    """How far the jobs' start order moved from the largest-first order of their priorities:
    mean and 95th percentile of |start rank - size rank| / N. Files of one size share a rank
    range, so a tie is not counted as a move."""
    sizes = {path.stem: path.stat().st_size for path in inputs.iterdir()}
    starts = {}
    for record in (output / "records").glob("*.json"):
        starts[record.stem] = json.loads(record.read_text())["started"]
    names = sorted(starts, key=lambda name: starts[name])
    by_size = sorted(sizes.values(), reverse=True)
    first_rank, last_rank = {}, {}
    for rank, size in enumerate(by_size):
        first_rank.setdefault(size, rank)
        last_rank[size] = rank
    moves = []
    for rank, name in enumerate(names):
        low, high = first_rank[sizes[name]], last_rank[sizes[name]]
        moves.append(max(low - rank, rank - high, 0) / len(names))
    moves.sort()
    return statistics.mean(moves), moves[int(0.95 * (len(moves) - 1))]


def marginal_costs(args: argparse.Namespace, model: Path) -> None:
    extra = args.snakemake_arg or []
    print(f"marginal cost of one more tiny file; extra arguments: {' '.join(extra) or 'none'}")
    print(
        "| worker | bundle_size | files | wall s | marginal s per file "
        "| order moved: mean, p95 of N |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for mode in args.modes:
        for bundle_size in args.bundle_sizes:
            previous = None
            for count in args.counts:
                inputs = tiny_files(args.workdir / f"n{count}", count)
                wall, output = run(
                    args.workdir, inputs, model, mode, extra, bundle_size=bundle_size
                )
                marginal = (
                    ""
                    if previous is None
                    else f"{(wall - previous[1]) / (count - previous[0]):.3f}"
                )
                mean, p95 = order_displacement(inputs, output)
                print(
                    f"| {mode} | {bundle_size or '-'} | {count} | {wall:.1f} | {marginal} "
                    f"| {mean:.1%}, {p95:.1%} |",
                    flush=True,
                )
                previous = (count, wall)


def dry_runs(args: argparse.Namespace, model: Path) -> None:
    print("`snakemake --dry-run` of N tiny files:")
    print("| bundle_size | files | wall s | per 1,000 files s |")
    print("| --- | --- | --- | --- |")
    for bundle_size in args.bundle_sizes:
        for count in args.counts:
            inputs = tiny_files(args.workdir / f"n{count}", count)
            extra = args.snakemake_arg or []
            wall, _ = run(
                args.workdir, inputs, model, "resident", extra, dry=True, bundle_size=bundle_size
            )
            print(
                f"| {bundle_size or '-'} | {count:,} | {wall:.1f} | {wall / count * 1000:.2f} |",
                flush=True,
            )


def demo_set(args: argparse.Namespace, model: Path) -> None:
    print("\nthe demo set (8 files, 13,222 sequences), two CPU slots:")
    print("| worker | wall s | utilisation | start-up + load s (share) | models loaded |")
    print("| --- | --- | --- | --- | --- |")
    for mode in args.modes:
        wall, output = run(args.workdir, args.workdir / "demo" / "fasta", model, mode, [])
        summary = json.loads((output / "summary.json").read_text())
        print(
            f"| {mode} | {wall:.1f} | {summary['utilisation']:.0%} | "
            f"{summary['setup_seconds']:.1f} ({summary['setup_share']:.0%}) | "
            f"{summary['models_loaded']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/seqembed-per-file"))
    parser.add_argument("--counts", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--bundle-sizes", type=int, nargs="+", default=[0])
    parser.add_argument("--snakemake-arg", action="append", help="passed to every run")
    parser.add_argument("--demo", action="store_true", help="also (b), the demo set")
    parser.add_argument("--dry-run", action="store_true", help="time dry runs instead")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    model, _ = write_demo(args.workdir / "demo")
    if args.dry_run:
        dry_runs(args, model)
        return
    marginal_costs(args, model)
    if args.demo:
        demo_set(args, model)


if __name__ == "__main__":
    main()
