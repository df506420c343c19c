"""GPU benchmark for a lent machine: one command, a few minutes on one H200.

    .venv/bin/python bench/gpu_benchmark.py --out results/gpu-bench

Generates random-weight checkpoints with the shapes of ESM-2 650M and 3B (fp16 on disk, as
fair-esm publishes the large ones) and a corpus of translated-read-like sequences, then
reports per model: load seconds (seqembed's loader, and fair-esm's for 650M), tokens/s in
bf16 through seqembed's batching and fused attention, model FLOP utilisation (MFU) against a
bf16 matmul peak measured on the same GPU, and fp32 tokens/s the way fair-esm's extraction
runs (4,096-token batches, its own attention); for 650M also what per-residue output costs
(rows copied to the host per batch and written to HDF5) and what one file costs in four
shards against whole on the one device (shard_size: jobs, gather); and a model with its own
code at DNABERT-2's shape in fp32, bf16 and fp16 (speed, and how far half precision moves the
embeddings). `--smoke` runs the same code on
tiny shapes, on the CPU, in seconds: the test suite does that so the script is known to work
before a GPU is ever lent.
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

import torch  # noqa: E402

from seqembed.compute.backends import load_backend  # noqa: E402
from seqembed.compute.backends.esm import EsmBackend, load_esm  # noqa: E402
from seqembed.compute.batch_loop import embed_all  # noqa: E402
from seqembed.compute.batching import fixed_budget, make_batches  # noqa: E402
from seqembed.compute.embed_file import batch_budget, embed_file  # noqa: E402
from seqembed.compute.memory import fit_memory, measure_sequence_bytes  # noqa: E402
from seqembed.demo import random_protein, read_length, save_esm2_checkpoint  # noqa: E402
from seqembed.fasta import FastaRecords  # noqa: E402
from seqembed.shards import SMALLEST  # noqa: E402

# name: (layers, width, heads)
SHAPES = {
    "650M": (33, 1280, 20),
    "3B": (36, 2560, 40),
}
SMOKE_SHAPES = {"tiny": (2, 64, 4)}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak_tflops(device: str, dtype: torch.dtype, size: int, seconds: float) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    runs, started = 0, time.time()
    while time.time() - started < seconds:
        a @ b
        runs += 1
        if runs % 10 == 0:
            synchronize(device)
    synchronize(device)
    return 2 * size**3 * runs / (time.time() - started) / 1e12


def write_checkpoint(folder: Path, shape: tuple[int, int, int], device: str) -> Path:
    """fair-esm's checkpoint layout, weights initialised on the target device (fast) and
    stored in fp16."""
    from esm.model.esm2 import ESM2

    layers, width, heads = shape
    with torch.device(device):
        network = ESM2(num_layers=layers, embed_dim=width, attention_heads=heads)
    path = folder / f"esm2_t{layers}_{width}D_bench.pt"
    save_esm2_checkpoint(network, path, dtype=torch.float16)
    del network
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return path


def corpus(sequences: int, seed: int = 11) -> FastaRecords:
    rng = random.Random(seed)
    texts = [random_protein(rng, read_length(rng, 50, 600)) for _ in range(sequences)]
    return FastaRecords([f"s{i}" for i in range(sequences)], texts)


def flops_per_token(shape: tuple[int, int, int], mean_tokens: float) -> float:
    """2 x parameters (matrix products of the layers and the LM head), plus attention's two
    T x T products: 4 x T x width per layer and token."""
    layers, width, _ = shape
    parameters = layers * 12 * width * width + 33 * width
    return 2 * parameters + 4 * layers * mean_tokens * width


def run_seqembed(path: Path, records: FastaRecords, device: str, precision: str):
    """As an embed job does it: auto budget from the free memory once the model is in."""
    backend = load_backend(str(path), device=device, precision=precision, truncation=1022)
    layer = backend.num_layers
    budget = batch_budget("auto", backend, [layer])
    warm = FastaRecords(records.ids[:8], records.sequences[:8])
    embed_all(backend, warm, [layer], budget, truncation=1022)
    synchronize(device)
    started = time.time()
    result = embed_all(backend, records, [layer], budget, truncation=1022)
    synchronize(device)
    seconds = time.time() - started
    return result, seconds, backend


def run_fair_esm_fp32(path: Path, records: FastaRecords, device: str, seconds_cap: float):
    """fair-esm's extraction loop: its loader, fp32, 4,096-token batches, its attention."""
    import argparse as arguments

    import esm

    torch.serialization.add_safe_globals([arguments.Namespace])
    network, alphabet = esm.pretrained.load_model_and_alphabet_local(str(path))
    network = network.eval().to(device=device, dtype=torch.float32)
    converter = alphabet.get_batch_converter(1022)
    lengths = [len(s) for s in records.sequences]
    batches = make_batches(lengths, fixed_budget(4096), extra_tokens=2, truncation=1022)
    tokens = 0
    synchronize(device)
    started = time.time()
    with torch.no_grad():
        for batch in batches:
            _, _, batch_tokens = converter([("x", records.sequences[i]) for i in batch.indices])
            network(batch_tokens.to(device), repr_layers=[network.num_layers])
            tokens += sum(min(lengths[i], 1022) + 2 for i in batch.indices)
            if time.time() - started > seconds_cap:
                break
    synchronize(device)
    del network
    return tokens / (time.time() - started)


def fair_esm_load_seconds(path: Path) -> float:
    import argparse as arguments

    import esm

    torch.serialization.add_safe_globals([arguments.Namespace])
    started = time.time()
    network, _ = esm.pretrained.load_model_and_alphabet_local(str(path))
    seconds = time.time() - started
    del network
    return seconds


def memory_check(path: Path, device: str, precision: str, tokens: int) -> dict:
    """The worker's measured cost per sequence, fitted from two probes, against the peak of a
    real batch as the budget sizes it."""
    backend = EsmBackend.load(str(path), device=device, precision=precision, truncation=1022)
    layer = backend.num_layers
    fit = fit_memory(backend, [layer])
    budget = batch_budget("auto", backend, [layer])
    sequences = max(1, budget(tokens) // tokens)
    measured = measure_sequence_bytes(backend, [layer], tokens, sequences) * sequences
    predicted = fit.bytes_per_sequence(tokens) * sequences
    del backend
    return {
        "memory_tokens": tokens,
        "memory_batch_sequences": sequences,
        "memory_predicted_gib": predicted / 2**30,
        "memory_measured_gib": measured / 2**30,
        "memory_bytes_per_token_linear": fit.linear,
        "memory_bytes_per_token_squared": fit.quadratic,
    }


def peptide_files(folder: Path, files: int, sequences: int, seed: int = 13) -> Path:
    """VirNucPro's input: files of translated reads, about 50 residues each."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        text = "".join(
            f">r{index}_{i}\n{random_protein(rng, rng.randint(40, 60))}\n" for i in range(sequences)
        )
        (folder / f"reads{index:02d}.fasta").write_text(text)
    return folder


def end_to_end(path: Path, inputs: Path, out: Path, device: str) -> dict:
    """The same files through `snakemake` on one device: resident workers, then one process
    per file. Wall seconds and the summary's accounting for each."""
    figures = {}
    for mode in ("resident", "per_file"):
        output = out / f"e2e-{path.stem}-{mode}"
        command = [
            str(Path(sys.executable).with_name("snakemake")),
            *("-s", str(REPO / "Snakefile"), "--cores", "4", "--resources", "gpu=1"),
            *("--config", f"input_dir={inputs}", f"output_dir={output}", f"model={path}"),
            *(f"device={'cpu' if device == 'cpu' else 'cuda'}", "cpu_slots=1", f"worker={mode}"),
            *("verbosity=quiet", f"lock_dir={out / 'locks'}"),
        ]
        started = time.time()
        subprocess.run(command, cwd=out, check=True, capture_output=True)
        wall = time.time() - started
        summary = json.loads((output / "summary.json").read_text())
        figures[mode] = {
            "wall_seconds": wall,
            "residues_per_s": summary["residues"] / wall,
            "utilisation": summary["utilisation"],
            "setup_seconds": summary["setup_seconds"],
            "setup_share": summary["setup_share"],
            "models_loaded": summary["models_loaded"],
        }
        shutil.rmtree(output, ignore_errors=True)
    figures["speedup"] = figures["per_file"]["wall_seconds"] / figures["resident"]["wall_seconds"]
    return figures


def shard_cost(path: Path, inputs: Path, out: Path, device: str, shards: int = 4) -> dict:
    """One file (the peptide files as one) through `snakemake` on one device, whole and in
    `shards` shards: what sharding costs where it cannot spread the work (a second device
    would take half the shards)."""
    folder = out / "one-file"
    folder.mkdir(parents=True, exist_ok=True)
    single = folder / "all.fasta"
    text = "".join(part.read_text() for part in sorted(inputs.glob("*.fasta")))
    while len(text) < shards * SMALLEST:  # the smoke test's few peptides, repeated
        text += text
    single.write_text(text)
    figures = {}
    for count in (1, shards):
        output = out / f"shards-{path.stem}-{count}"
        shard_size = single.stat().st_size // count + 1 if count > 1 else 0
        command = [
            str(Path(sys.executable).with_name("snakemake")),
            *("-s", str(REPO / "Snakefile"), "--cores", "4", "--resources", "gpu=1"),
            *("--config", f"input_dir={folder}", f"output_dir={output}", f"model={path}"),
            *(f"device={'cpu' if device == 'cpu' else 'cuda'}", "cpu_slots=1"),
            *(f"shard_size={shard_size}", "verbosity=quiet", f"lock_dir={out / 'locks'}"),
        ]
        started = time.time()
        subprocess.run(command, cwd=out, check=True, capture_output=True)
        figures[f"wall_seconds_{count}"] = time.time() - started
        shutil.rmtree(output, ignore_errors=True)
    figures["shards"] = shards
    figures["overhead"] = figures[f"wall_seconds_{shards}"] / figures["wall_seconds_1"]
    return figures


def transformers_backend(path: Path, records, device: str, precision: str, out: Path):
    """The same weights as a Hugging Face folder, through transformers' ESM classes: load
    seconds and tokens/s beside the fair-esm backend's."""
    from seqembed.demo_hf import convert_esm2_checkpoint

    folder = convert_esm2_checkpoint(path, out / "models" / f"{path.stem}-hf")
    started = time.time()
    backend = load_backend(str(folder), device=device, precision=precision, truncation=1022)
    synchronize(device)
    load_seconds = time.time() - started
    del backend
    result, seconds, _ = run_seqembed(folder, records, device, precision)
    shutil.rmtree(folder)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {
        "transformers_load_seconds": load_seconds,
        "transformers_tokens_per_s": result.real_tokens / seconds,
    }


def per_residue_cost(path: Path, records: FastaRecords, device: str, precision: str, out: Path):
    """Residues/s of one file with mean output only, and with per-residue rows too (copied to
    the host batch by batch and written into HDF5 as float16): what streaming costs on a GPU."""
    backend = EsmBackend.load(str(path), device=device, precision=precision, truncation=1022)
    figures = {}
    for label, include, output_format in (
        ("mean", ["mean"], "pt"),
        ("per_tok_h5_fp16", ["mean", "per_tok"], "h5"),
    ):
        request = {
            "name": "bench",
            "ids": records.ids,
            "sequences": records.sequences,
            "output": str(out / f"per-residue.{output_format}"),
            "layers": "last",
            "toks_per_batch": "auto",
            "truncation": 1022,
            "output_layout": "default",
            "include": include,
            "output_format": output_format,
            "store_float16": ["per_tok"] if "per_tok" in include else [],
        }
        synchronize(device)
        started = time.time()
        stats = embed_file(backend, request)
        synchronize(device)
        figures[label] = stats["real_tokens"] / (time.time() - started)
        Path(stats["temporary"]).unlink()
    figures["ratio"] = figures["per_tok_h5_fp16"] / figures["mean"]
    return figures


def own_code_dna(out: Path, device: str, smoke: bool) -> dict:
    """A model with its own code, as DNABERT-2/-S ship theirs (the suite's stand-in, built at
    DNABERT-2's shape: 12 layers x 768, 12 heads; random weights): tokens/s in fp32 and in
    half precision (built in fp32, cast, run under autocast: their attention adds a float32
    bias), and how far half precision moves the mean embeddings (relative L2, worst read)."""
    from seqembed.demo_hf import random_dna, write_tiny_dna_model

    shape = (
        {"layers": 2, "dim": 32, "heads": 4} if smoke else {"layers": 12, "dim": 768, "heads": 12}
    )
    folder = write_tiny_dna_model(out / "models" / "own-code-dna", remote_code=True, **shape)
    rng = random.Random(5)
    reads = [random_dna(rng, rng.randint(150, 1000)) for _ in range(16 if smoke else 512)]
    records = FastaRecords([f"r{i}" for i in range(len(reads))], reads)
    budget = fixed_budget(4096 if smoke else 32768)
    figures, means = {}, {}
    for precision in ("fp32", "bf16", "fp16"):
        backend = load_backend(
            str(folder), device=device, precision=precision, truncation=1022,
            trust_remote_code=True,
        )  # fmt: skip
        layer = backend.num_layers
        embed_all(
            backend, FastaRecords(records.ids[:4], reads[:4]), [layer], budget, truncation=1022
        )
        synchronize(device)
        started = time.time()
        result = embed_all(backend, records, [layer], budget, truncation=1022)
        synchronize(device)
        figures[f"{precision}_tokens_per_s"] = result.real_tokens / (time.time() - started)
        means[precision] = result.pooled["mean"][layer].float().cpu()
        del backend
        if not smoke:
            torch.cuda.empty_cache()
    for precision in ("bf16", "fp16"):
        difference = (means[precision] - means["fp32"]).norm(dim=1) / means["fp32"].norm(dim=1)
        figures[f"{precision}_relative_error"] = difference.max().item()
    shutil.rmtree(folder)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/gpu-bench"))
    parser.add_argument("--sequences", type=int, default=4000)
    parser.add_argument("--files", type=int, default=3, help="files through snakemake")
    parser.add_argument("--peptides-per-file", type=int, default=10_000)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    args = parser.parse_args()

    smoke = args.smoke
    device = "cpu" if smoke else "cuda:0"
    shapes = SMOKE_SHAPES if smoke else SHAPES
    precision = "fp32" if smoke else "bf16"
    dtype = torch.float32 if smoke else torch.bfloat16
    sequences = 40 if smoke else args.sequences
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"device": "cpu" if smoke else torch.cuda.get_device_name(0), "models": {}}
    peak = matmul_peak_tflops(device, dtype, 256 if smoke else 8192, 0.5 if smoke else 10.0)
    report["matmul_peak_tflops"] = peak
    print(f"device {report['device']}: measured {precision} matmul peak {peak:.1f} TFLOP/s")
    records = corpus(sequences)
    inputs = peptide_files(
        args.out / "peptides", args.files, 20 if smoke else args.peptides_per_file
    )

    for name, shape in shapes.items():
        path = write_checkpoint(args.out / "models", shape, device)
        started = time.time()
        network, _, _ = load_esm(str(path), device, dtype)
        synchronize(device)
        load_seconds = time.time() - started
        del network
        figures = {"load_seconds": load_seconds}
        if smoke or name == "650M":  # fair-esm's loader builds 3B on the CPU: minutes
            figures["fair_esm_load_seconds"] = fair_esm_load_seconds(path)
        result, seconds, _ = run_seqembed(path, records, device, precision)
        real_per_s = result.real_tokens / seconds
        mean_tokens = result.real_tokens / max(1, result.unique_sequences)
        mfu = real_per_s * flops_per_token(shape, mean_tokens) / (peak * 1e12)
        figures.update(
            tokens_per_s=real_per_s,
            padded_tokens_per_s=result.computed_tokens / seconds,
            padding_efficiency=result.real_tokens / result.computed_tokens,
            mfu=mfu,
            oom_backoffs=result.oom_backoffs,
            sequences=len(records.sequences),
            seconds=seconds,
        )
        figures["fair_esm_fp32_tokens_per_s"] = run_fair_esm_fp32(
            path, records, device, seconds_cap=2 if smoke else 30
        )
        if not smoke:
            torch.cuda.empty_cache()
        figures.update(memory_check(path, device, precision, 128 if smoke else 1024))
        print(
            f"{name}: a batch of {figures['memory_batch_sequences']} x "
            f"{figures['memory_tokens']} tokens: predicted "
            f"{figures['memory_predicted_gib'] * 1024:,.1f} MiB, measured "
            f"{figures['memory_measured_gib'] * 1024:,.1f} MiB"
        )
        if not smoke:
            torch.cuda.empty_cache()
        figures["end_to_end"] = end_to_end(path, inputs, args.out, device)
        e2e = figures["end_to_end"]
        print(
            f"{name}: {args.files} files through snakemake, resident "
            f"{e2e['resident']['wall_seconds']:.1f} s ({e2e['resident']['models_loaded']} load) "
            f"vs per file {e2e['per_file']['wall_seconds']:.1f} s "
            f"({e2e['per_file']['models_loaded']} loads): {e2e['speedup']:.2f}x"
        )
        if smoke or name == "650M":
            figures.update(transformers_backend(path, records, device, precision, args.out))
            print(
                f"{name} through transformers: load {figures['transformers_load_seconds']:.2f} s, "
                f"{precision} {figures['transformers_tokens_per_s']:,.0f} tokens/s"
            )
            figures["per_residue"] = per_residue_cost(path, records, device, precision, args.out)
            cost = figures["per_residue"]
            print(
                f"{name}: mean only {cost['mean']:,.0f} tokens/s, with per-residue rows to "
                f"HDF5 (float16) {cost['per_tok_h5_fp16']:,.0f} tokens/s ({cost['ratio']:.2f}x)"
            )
            figures["sharded"] = shard_cost(path, inputs, args.out, device, 2 if smoke else 4)
            sharded = figures["sharded"]
            in_shards = sharded[f"wall_seconds_{sharded['shards']}"]
            print(
                f"{name}: one file through snakemake whole {sharded['wall_seconds_1']:.1f} s, "
                f"in {sharded['shards']} shards {in_shards:.1f} s on one device "
                f"({sharded['overhead']:.2f}x)"
            )
        report["models"][name] = figures
        print(
            f"{name}: load {load_seconds:.2f} s (fair-esm "
            f"{figures.get('fair_esm_load_seconds', float('nan')):.2f} s); {precision} "
            f"{real_per_s:,.0f} tokens/s, MFU {mfu:.0%}, padding "
            f"{figures['padding_efficiency']:.3f}; fair-esm fp32 "
            f"{figures['fair_esm_fp32_tokens_per_s']:,.0f} tokens/s"
        )
        path.unlink()
        path.with_name(f"{path.stem}-contact-regression.pt").unlink()
        if not smoke:
            torch.cuda.empty_cache()
    dna = report["own_code_dna"] = own_code_dna(args.out, device, smoke)
    print(
        "own-code DNA model (DNABERT-2's shape): fp32 "
        f"{dna['fp32_tokens_per_s']:,.0f} tokens/s, bf16 {dna['bf16_tokens_per_s']:,.0f} "
        f"(error {dna['bf16_relative_error']:.1e}), fp16 {dna['fp16_tokens_per_s']:,.0f} "
        f"(error {dna['fp16_relative_error']:.1e})"
    )
    (args.out / "gpu_benchmark.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
