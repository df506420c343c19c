"""What one more input file costs, and where a run's device time goes: resident workers
against one process per file, side by side in one run, on this machine's CPU.

    .venv/bin/python bench/per_file_cost.py [--files 4] [--workdir /tmp/seqembed-per-file]

(a) marginal cost: N and then 10 N tiny files (3 short sequences each) through
    `snakemake --cores 2 --resources gpu=2` with the demo's model and two CPU slots; the
    marginal wall time of one more file is (T(10 N) - T(N)) / 9 N;
(b) the demo set (`python -m seqembed.demo`): wall time, device utilisation, start-up and
    model-load share, models loaded, from summary.json.
Each for `worker: resident` and `worker: per_file`. docs/benchmarks.md keeps the results.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
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
        (folder / f"tiny{index:04d}.fasta").write_text(records)
    return folder


def run(workdir: Path, inputs: Path, model: Path, mode: str) -> tuple[float, dict]:
    """Wall seconds of one `snakemake` run from start to exit, and its summary."""
    output = workdir / f"results-{inputs.name}-{mode}"
    shutil.rmtree(output, ignore_errors=True)
    command = [
        str(Path(sys.executable).with_name("snakemake")),
        *("-s", str(REPO / "Snakefile"), "--cores", "2", "--resources", "gpu=2"),
        *("--config", f"input_dir={inputs}", f"output_dir={output}", f"model={model}"),
        *("device=cpu", "cpu_slots=2", f"worker={mode}", "verbosity=quiet"),
        f"lock_dir={workdir / 'locks'}",
    ]
    started = time.time()
    subprocess.run(command, cwd=workdir, check=True, capture_output=True)
    wall = time.time() - started
    return wall, json.loads((output / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/seqembed-per-file"))
    parser.add_argument("--files", type=int, default=4, help="N: the small set; 10 N the large")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    # the demo's model and files (seqembed.demo)
    model, _ = write_demo(args.workdir / "demo")
    small = tiny_files(args.workdir / f"n{args.files}", args.files)
    large = tiny_files(args.workdir / f"n{10 * args.files}", 10 * args.files)
    print(f"marginal cost of one more tiny file ({args.files} vs {10 * args.files} files):")
    print("| worker | T(N) s | T(10 N) s | marginal s per file |")
    print("| --- | --- | --- | --- |")
    for mode in MODES:
        t_small, _ = run(args.workdir, small, model, mode)
        t_large, _ = run(args.workdir, large, model, mode)
        marginal = (t_large - t_small) / (9 * args.files)
        print(f"| {mode} | {t_small:.1f} | {t_large:.1f} | {marginal:.2f} |")
    print("\nthe demo set (8 files, 13,222 sequences), two CPU slots:")
    print("| worker | wall s | utilisation | start-up + load s (share) | models loaded |")
    print("| --- | --- | --- | --- | --- |")
    for mode in MODES:
        wall, summary = run(args.workdir, args.workdir / "demo" / "fasta", model, mode)
        print(
            f"| {mode} | {wall:.1f} | {summary['utilisation']:.0%} | "
            f"{summary['setup_seconds']:.1f} ({summary['setup_share']:.0%}) | "
            f"{summary['models_loaded']} |"
        )


if __name__ == "__main__":
    main()
