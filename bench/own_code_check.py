"""A model that ships its own code, run through the workflow exactly as the README shows it
(`--config ... trust_remote_code=true`), against the recipe of the model's own documentation.

    .venv/bin/python bench/own_code_check.py FOLDER [--reads 60] [--precisions fp32 bf16 fp16]

FOLDER is a Hugging Face model folder with its own code (e.g. DNABERT-S's files from
MAGICS-LAB/DNABERT_S `evaluate/model_codes/`, with random weights of the real shape where the
real ones cannot be downloaded). Random DNA reads of 150-1,000 bp (within the default
truncation) in two files go through `snakemake` on the CPU once per precision, in the
`virnucpro` layout. The recipe is DNABERT-S's README's, one read at a time
(`model(ids)[0][0].mean(0)`), on the network built from its config and loaded strictly from
its weights (tests/reference.py): none of seqembed's loading code. Prints per precision the
largest difference to the recipe (fp32) or the largest relative L2 error per read against
the fp32 run, and the compute seconds and tokens/s from the records. docs/benchmarks.md keeps
the results.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

import torch  # noqa: E402
from reference import recipe_network  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from seqembed.demo_hf import random_dna  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def write_reads(folder: Path, reads: int, longest: int, seed: int = 7) -> dict[str, str]:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    sequences = {}
    for part in ("first", "second"):
        with open(folder / f"{part}.fna", "w") as handle:
            for index in range(reads // 2):
                name = f"{part}_{index}"
                sequences[name] = random_dna(rng, rng.randint(150, longest))
                handle.write(f">{name}\n{sequences[name]}\n")
    return sequences


def run(workdir: Path, model: Path, precision: str) -> dict[str, torch.Tensor]:
    output = workdir / f"out-{precision}"
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--cores", "2", "--resources", "gpu=1"]
    command += ["--config", "input_dir=reads", "input_glob=*.fna", f"model={model}"]
    command += ["trust_remote_code=true", "output_layout=virnucpro", f"precision={precision}"]
    command += ["device=cpu", "cpu_slots=1", f"output_dir={output}", f"lock_dir={workdir}/locks"]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{precision}: snakemake failed:\n{result.stderr[-3000:]}")
    vectors, seconds, tokens = {}, 0.0, 0
    for path in sorted((output / "embeddings").glob("*.pt")):
        saved = torch.load(path)
        for item in saved["data"]:
            vectors[item["label"]] = torch.tensor(item["mean_representation"])
        record = json.loads((output / "records" / f"{path.stem}.json").read_text())
        seconds += record["compute_seconds"]
        tokens += record["real_tokens"]
    print(
        f"{precision}: {len(vectors)} reads, compute {seconds:.1f} s, {tokens / seconds:.0f} tok/s"
    )
    return vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--reads", type=int, default=60)
    # within the default truncation (1,022 bp), which the recipe does not know of
    parser.add_argument("--longest", type=int, default=1000)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    options = parser.parse_args()
    model = options.folder.resolve()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        sequences = write_reads(workdir / "reads", options.reads, options.longest)
        got = {precision: run(workdir, model, precision) for precision in options.precisions}
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
    network = recipe_network(model, trust_remote_code=True)
    with torch.no_grad():
        recipe = {
            name: network(tokenizer(sequence, return_tensors="pt")["input_ids"])[0][0].mean(0)
            for name, sequence in sequences.items()
        }
    exact = got.get("fp32")
    if exact is not None:
        worst = max((exact[name] - recipe[name]).abs().max().item() for name in recipe)
        print(f"fp32 against the recipe: largest difference {worst:.2e}")
    for precision, vectors in got.items():
        if precision == "fp32" or exact is None:
            continue
        relative = max(
            ((vectors[name] - exact[name]).norm() / exact[name].norm()).item() for name in recipe
        )
        print(f"{precision} against fp32: largest relative L2 error per read {relative:.2e}")


if __name__ == "__main__":
    main()
