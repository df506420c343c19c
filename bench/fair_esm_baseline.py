"""The baseline: what fair-esm's extraction script does for one FASTA file, written from its
documented usage (esm.pretrained loader, FastaBatchedDataset, length-sorted token-budget
batches of 4,096, the alphabet's batch converter with truncation 1,022, fp32, the mean over
residue positions, one .pt file per sequence).

    python bench/fair_esm_baseline.py MODEL.pt FILE.fasta OUT_DIR

Prints one JSON line of timings and token counts. DataLoader worker processes (its script
uses two) are left out: on the two cores of a CPU benchmark they compete with the model.
"""

import sys
import time

started = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import esm  # noqa: E402
import torch  # noqa: E402

imported = time.time()


def main() -> None:
    model_path, fasta, out_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.serialization.add_safe_globals([argparse.Namespace])
    load_started = time.time()
    model, alphabet = esm.pretrained.load_model_and_alphabet_local(model_path)
    model.eval()
    loaded = time.time()
    layer = model.num_layers

    dataset = esm.FastaBatchedDataset.from_file(fasta)
    batches = dataset.get_batch_indices(4096, extra_toks_per_seq=1)
    loader = torch.utils.data.DataLoader(
        dataset, collate_fn=alphabet.get_batch_converter(1022), batch_sampler=batches
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    real = computed = residues = 0
    write_seconds = 0.0
    with torch.no_grad():
        for labels, strs, tokens in loader:
            out = model(tokens, repr_layers=[layer])
            representation = out["representations"][layer]
            computed += tokens.numel()
            write_started = time.time()
            for i, label in enumerate(labels):
                length = min(1022, len(strs[i]))
                real += length + 2
                residues += len(strs[i])
                mean = representation[i, 1 : length + 1].mean(0).clone()
                name = label.split()[0]
                torch.save(
                    {"label": label, "mean_representations": {layer: mean}}, out_dir / f"{name}.pt"
                )
            write_seconds += time.time() - write_started
    finished = time.time()
    print(
        json.dumps(
            {
                "sequences": len(dataset),
                "residues": residues,
                "real_tokens": real,
                "computed_tokens": computed,
                "import_seconds": imported - started,
                "load_seconds": loaded - load_started,
                "compute_seconds": finished - loaded - write_seconds,
                "write_seconds": write_seconds,
                "wall_seconds": finished - started,
            }
        )
    )


if __name__ == "__main__":
    main()
