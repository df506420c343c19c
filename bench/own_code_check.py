"""A model that ships its own code, run through the workflow exactly as the README shows it
(`--config ... trust_remote_code=true`), against the recipe of the model's own documentation.

    .venv/bin/python bench/own_code_check.py FOLDER --family dnabert|nt-v2|esm-c
        [--reads 60] [--longest 1000] [--precisions fp32 bf16 fp16]

FOLDER is a Hugging Face model folder with its own code, with random weights of the real
shape where the real ones cannot be downloaded: DNABERT-S's files (MAGICS-LAB/DNABERT_S
`evaluate/model_codes/`), Nucleotide Transformer v2's, or ESM++'s (Synthyra/FastPLMs). Random
reads (or proteins for ESM C) of 150 to `--longest` letters in two files go through
`snakemake` on the CPU once per precision. The recipes, one sequence at a time, use none of
seqembed's loading code (tests/reference.py):
- dnabert: DNABERT-S's README, `model(ids)[0][0].mean(0)`, on the network built from its
  config and loaded strictly;
- nt-v2: the model card, `hidden_states[-1]` of its masked-LM class averaged over the
  attention mask (<cls> included), the class built by hand as users of transformers-4 code
  do on transformers 5;
- esm-c: ESM++'s README, `model(**model.tokenizer(...))` of `AutoModelForMaskedLM` (built by
  hand where that fails: its 2025 code), `last_hidden_state` averaged over the residues.
Prints per precision the largest difference to the recipe (fp32) or the largest relative L2
error per sequence against the fp32 run, and the compute seconds and tokens/s from the
records. docs/benchmarks.md keeps the results.
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
from reference import recipe_masked_lm, recipe_network  # noqa: E402
from transformers import AutoModelForMaskedLM, AutoTokenizer  # noqa: E402

from seqembed.demo import random_protein  # noqa: E402
from seqembed.demo_hf import random_dna  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def write_inputs(folder: Path, count: int, longest: int, protein: bool) -> dict[str, str]:
    rng = random.Random(7)
    make = random_protein if protein else random_dna
    folder.mkdir(parents=True)
    sequences = {}
    for part in ("first", "second"):
        with open(folder / f"{part}.fa", "w") as handle:
            for index in range(count // 2):
                name = f"{part}_{index}"
                sequences[name] = make(rng, rng.randint(150, longest))
                handle.write(f">{name}\n{sequences[name]}\n")
    return sequences


def run(workdir: Path, model: Path, precision: str, layout: str) -> dict[str, torch.Tensor]:
    output = workdir / f"out-{precision}"
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--cores", "2", "--resources", "gpu=1"]
    command += ["--config", "input_dir=inputs", "input_glob=*.fa", f"model={model}"]
    command += ["trust_remote_code=true", f"output_layout={layout}", f"precision={precision}"]
    command += ["device=cpu", "cpu_slots=1", f"output_dir={output}", f"lock_dir={workdir}/locks"]
    command += ["truncation=100000"]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{precision}: snakemake failed:\n{result.stderr[-3000:]}")
    vectors, seconds, tokens = {}, 0.0, 0
    for path in sorted((output / "embeddings").glob("*.pt")):
        saved = torch.load(path)
        if layout == "virnucpro":
            for item in saved["data"]:
                vectors[item["label"]] = torch.tensor(item["mean_representation"])
        else:
            (means,) = saved["mean_representations"].values()
            vectors.update(zip(saved["ids"], means, strict=True))
        record = json.loads((output / "records" / f"{path.stem}.json").read_text())
        seconds += record["compute_seconds"]
        tokens += record["real_tokens"]
    rate = tokens / seconds
    print(f"{precision}: {len(vectors)} sequences, compute {seconds:.1f} s, {rate:.0f} tok/s")
    return vectors


def recipe(family: str, model: Path, sequences: dict[str, str]) -> dict[str, torch.Tensor]:
    if family == "esm-c":
        try:
            network = AutoModelForMaskedLM.from_pretrained(model, trust_remote_code=True).eval()
        except Exception as error:  # noqa: BLE001 - its 2025 code cannot be built on 5
            print(f"AutoModelForMaskedLM failed ({type(error).__name__}): built by hand")
            network = recipe_masked_lm(model)
        with torch.no_grad():
            return {
                name: network(**network.tokenizer([sequence], return_tensors="pt"))
                .last_hidden_state[0, 1 : len(sequence) + 1]
                .mean(0)
                for name, sequence in sequences.items()
            }
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
    if family == "dnabert":
        network = recipe_network(model, trust_remote_code=True)
        with torch.no_grad():
            return {
                name: network(tokenizer(sequence, return_tensors="pt")["input_ids"])[0][0].mean(0)
                for name, sequence in sequences.items()
            }
    network = recipe_masked_lm(model)
    vectors = {}
    with torch.no_grad():
        for name, sequence in sequences.items():
            tokens = tokenizer([sequence], return_tensors="pt")["input_ids"]
            mask = tokens != tokenizer.pad_token_id
            out = network(tokens, attention_mask=mask, output_hidden_states=True)
            vectors[name] = out.hidden_states[-1][0][mask[0]].mean(0)
    return vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--family", choices=["dnabert", "nt-v2", "esm-c"], required=True)
    parser.add_argument("--reads", type=int, default=60)
    parser.add_argument("--longest", type=int, default=1000)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    options = parser.parse_args()
    model = options.folder.resolve()
    protein = options.family == "esm-c"
    layout = "default" if protein else "virnucpro"
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        sequences = write_inputs(workdir / "inputs", options.reads, options.longest, protein)
        got = {p: run(workdir, model, p, layout) for p in options.precisions}
    expected = recipe(options.family, model, sequences)
    exact = got.get("fp32")
    if exact is not None:
        worst = max((exact[name] - expected[name]).abs().max().item() for name in expected)
        print(f"fp32 against the recipe: largest difference {worst:.2e}")
    for precision, vectors in got.items():
        if precision == "fp32" or exact is None:
            continue
        relative = max(
            ((vectors[name] - exact[name]).norm() / exact[name].norm()).item() for name in expected
        )
        print(f"{precision} against fp32: largest relative L2 error per sequence {relative:.2e}")


if __name__ == "__main__":
    main()
