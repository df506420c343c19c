"""What `long_sequences: windows` costs against `truncate`, on a proteome-like length
distribution, through the workflow on this machine's CPU.

    .venv/bin/python bench/long_sequences.py [--proteins 600] [--layers 6] [--dim 320]

Lengths are log-normal (median 330 residues, as in a typical proteome) with a tail of long
proteins up to 5,000 residues (about 3 % longer than 1,022), in four files. The same files
run once per setting through `snakemake` (ESM-2 8M's shape, random weights, one CPU slot);
compute seconds come from the records. Printed per setting: residues computed (truncate:
each protein cut at 1,022; windows: every window's residues, overlaps included), compute
seconds, and the two ratios side by side: the extra compute of windows should follow the
extra residues, not exceed them. docs/benchmarks.md keeps the results.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from seqembed.compute.windows import computed_residues  # noqa: E402
from seqembed.demo import random_protein, write_tiny_esm2  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
WINDOW, OVERLAP = 1022, 256


def proteome(folder: Path, count: int, seed: int = 5) -> list[int]:
    """Four files of proteins within the window, and long.fasta with the longer ones, so
    that the long proteins' own compute time can be read from their file's record."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    lengths = []
    files = {name: open(folder / f"{name}.fasta", "w") for name in ("a", "b", "c", "d", "long")}
    for index in range(count):
        length = min(5000, max(30, int(rng.lognormvariate(math.log(330), 0.75))))
        lengths.append(length)
        name = "long" if length > WINDOW else "abcd"[index % 4]
        files[name].write(f">p{index}\n{random_protein(rng, length)}\n")
    for handle in files.values():
        handle.close()
    return lengths


def run(workdir: Path, model: Path, setting: str) -> dict[str, float]:
    output = workdir / setting
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--cores", "2", "--resources", "gpu=1"]
    command += ["--config", "input_dir=inputs", f"model={model}", f"long_sequences={setting}"]
    command += ["device=cpu", "cpu_slots=1", f"output_dir={output}", f"lock_dir={workdir}/locks"]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{setting}: snakemake failed:\n{result.stderr[-3000:]}")
    records = {p.stem: json.loads(p.read_text()) for p in (output / "records").glob("*.json")}
    return {name: r["compute_seconds"] for name, r in records.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proteins", type=int, default=600)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--dim", type=int, default=320)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        model = write_tiny_esm2(workdir / "model", layers=options.layers, dim=options.dim, heads=20)
        lengths = proteome(workdir / "inputs", options.proteins)
        long = sum(n > WINDOW for n in lengths)
        print(
            f"{len(lengths)} proteins, median {sorted(lengths)[len(lengths) // 2]}, "
            f"{long} longer than {WINDOW} ({long / len(lengths):.1%}), longest {max(lengths)}"
        )
        residues = {
            "truncate": sum(min(n, WINDOW) for n in lengths),
            "windows": sum(computed_residues(n, WINDOW, OVERLAP) for n in lengths),
        }
        long_residues = {
            "truncate": WINDOW * long,
            "windows": sum(computed_residues(n, WINDOW, OVERLAP) for n in lengths if n > WINDOW),
        }
        seconds = {setting: run(workdir, model, setting) for setting in residues}
    for setting in residues:
        print(
            f"{setting}: {residues[setting]:,} residues computed, "
            f"{sum(seconds[setting].values()):.1f} s; long.fasta {long_residues[setting]:,} "
            f"residues, {seconds[setting]['long']:.1f} s"
        )

    def ratios(of: dict, times: dict) -> str:
        return (
            f"residues {of['windows'] / of['truncate']:.3f}x, compute seconds "
            f"{times['windows'] / times['truncate']:.3f}x"
        )

    total = {setting: sum(by_file.values()) for setting, by_file in seconds.items()}
    print(f"windows / truncate, all files: {ratios(residues, total)}")
    long_seconds = {setting: by_file["long"] for setting, by_file in seconds.items()}
    print(f"windows / truncate, the long proteins: {ratios(long_residues, long_seconds)}")


if __name__ == "__main__":
    main()
