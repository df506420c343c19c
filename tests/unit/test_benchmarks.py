"""The GPU benchmark waits for a lent GPU machine, where a broken script would waste the
little device time there is: its --smoke mode runs the same code on tiny shapes here."""

import json
import subprocess
import sys

import pytest
from conftest import REPO


def test_gpu_benchmark_runs_end_to_end_in_smoke_mode(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu_benchmark.py"),
            "--smoke",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "gpu_benchmark.json").read_text())
    tiny = report["models"]["tiny"]
    assert report["matmul_peak_tflops"] > 0
    assert tiny["tokens_per_s"] > 0 and tiny["fair_esm_fp32_tokens_per_s"] > 0
    # only positive: on a shared CPU the half-second matmul peak is noise (2.3x seen under load)
    assert tiny["mfu"] > 0
    assert 0.5 < tiny["padding_efficiency"] <= 1
    # the measured memory of a batch, as predicted from two probes and as measured
    assert tiny["memory_measured_gib"] > 0
    assert tiny["memory_predicted_gib"] == pytest.approx(tiny["memory_measured_gib"], rel=0.2)
    # end to end through snakemake: one load with resident workers, one per file without
    e2e = tiny["end_to_end"]
    assert e2e["resident"]["models_loaded"] == 1 and e2e["per_file"]["models_loaded"] == 3
    assert e2e["resident"]["wall_seconds"] > 0 and e2e["speedup"] > 0
    assert tiny["per_residue"]["mean"] > 0 and tiny["per_residue"]["per_tok_h5_fp16"] > 0
    assert tiny["transformers_tokens_per_s"] > 0 and tiny["transformers_load_seconds"] > 0
    # one file whole and in shards (two in smoke mode) on one device: what a shard costs
    assert tiny["sharded"]["wall_seconds_1"] > 0 and tiny["sharded"]["wall_seconds_2"] > 0
    assert list((tmp_path / "models").iterdir()) == []  # large checkpoints are cleaned up
    # a model with its own code (DNABERT-2's traits) in every precision
    dna = report["own_code_dna"]
    assert all(dna[f"{p}_tokens_per_s"] > 0 for p in ("fp32", "bf16", "fp16"))
    assert dna["bf16_relative_error"] <= 1e-2 and dna["fp16_relative_error"] <= 1e-2
