"""Demo material made by the project, since model weights cannot be downloaded everywhere:
a tiny random-weight ESM-2 in fair-esm's official checkpoint layout (so it loads through
fair-esm's own loader, like a real one) and deterministic FASTA files.

    python -m seqembed.demo demo        # writes demo/model/*.pt and demo/fasta/*.fasta

The weights are random: the numbers mean nothing biologically, but every code path (loading,
batching, pooling, writing) is the one a real model takes.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def save_esm2_checkpoint(network, path: Path, dtype=None) -> Path:
    """`network` (an esm ESM2) as fair-esm publishes its checkpoints: `path` plus its
    `-contact-regression.pt`, with the released key prefixes, which fair-esm's loader strips
    again. The file name must start with "esm2": that is how fair-esm tells the architecture."""
    import torch

    state = {
        k: (v if dtype is None else v.to(dtype)).cpu() for k, v in network.state_dict().items()
    }
    regression = {k: state.pop(k) for k in list(state) if k.startswith("contact_head.regression.")}
    encoder = {
        (f"encoder.{k}" if k.startswith("lm_head.") else f"encoder.sentence_encoder.{k}"): v
        for k, v in state.items()
    }
    cfg = argparse.Namespace(
        encoder_layers=network.num_layers,
        encoder_embed_dim=network.embed_dim,
        encoder_attention_heads=network.attention_heads,
        token_dropout=network.token_dropout,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": encoder, "cfg": {"model": cfg}}, path)
    torch.save({"model": regression}, path.with_name(f"{path.stem}-contact-regression.pt"))
    return path


def write_tiny_esm2(
    folder: str | Path, *, layers: int = 4, dim: int = 64, heads: int = 4, seed: int = 0
) -> Path:
    """`{folder}/esm2_….pt` plus its `-contact-regression.pt`, the pair fair-esm expects."""
    import esm
    import torch

    torch.manual_seed(seed)
    network = esm.model.esm2.ESM2(
        num_layers=layers, embed_dim=dim, attention_heads=heads, alphabet="ESM-1b"
    )
    return save_esm2_checkpoint(network, Path(folder) / f"esm2_t{layers}_{dim}D_demo_random.pt")


def random_protein(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(AMINO_ACIDS, k=length))


def read_length(rng: random.Random, shortest: int, longest: int) -> int:
    """Log-normal lengths (median ~150), like translated reads and proteins: mostly short,
    a long tail."""
    value = int(math.exp(rng.gauss(math.log(150), 0.6)))
    return min(longest, max(shortest, value))


def write_fasta(path: Path, name: str, count: int, rng: random.Random, lengths=(30, 700)) -> None:
    with open(path, "w") as handle:
        for index in range(count):
            sequence = random_protein(rng, read_length(rng, *lengths))
            handle.write(f">{name}_{index:05d} demo random sequence\n")
            for start in range(0, len(sequence), 60):
                handle.write(sequence[start : start + 60] + "\n")


def file_sizes(files: int, smallest: int, largest: int) -> list[int]:
    """Heavy-tailed sequence counts from `largest` down to `smallest` (a geometric series), so
    the demo shows why the largest files must start first."""
    if files == 1:
        return [largest]
    ratio = (smallest / largest) ** (1 / (files - 1))
    return [round(largest * ratio**i) for i in range(files)]


def write_demo(
    folder: str | Path,
    *,
    files: int = 8,
    smallest: int = 200,
    largest: int = 5000,
    seed: int = 7,
) -> tuple[Path, list[Path]]:
    folder = Path(folder)
    model = write_tiny_esm2(folder / "model")
    fasta_folder = folder / "fasta"
    fasta_folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    counts = file_sizes(files, smallest, largest)
    rng.shuffle(counts)  # not in size order on disk: the workflow must find the big ones
    paths = []
    for number, count in enumerate(counts, start=1):
        path = fasta_folder / f"sample{number:02d}.fasta"
        write_fasta(path, f"sample{number:02d}", count, rng)
        paths.append(path)
    return model, paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="where model/ and fasta/ are written")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--smallest", type=int, default=200, help="sequences in the smallest file")
    parser.add_argument("--largest", type=int, default=5000, help="sequences in the largest file")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    model, paths = write_demo(
        args.folder,
        files=args.files,
        smallest=args.smallest,
        largest=args.largest,
        seed=args.seed,
    )
    print(f"model: {model} (random weights)\n{len(paths)} FASTA files in {paths[0].parent}")


if __name__ == "__main__":
    main()
