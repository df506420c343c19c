"""The GPU benchmark waits for a lent GPU machine, where a broken script would waste the
little device time there is: its --smoke mode runs the same code on tiny shapes here."""

import json
import subprocess
import sys

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
    assert 0 < tiny["mfu"] < 1
    assert 0.5 < tiny["padding_efficiency"] <= 1
    assert list((tmp_path / "models").iterdir()) == []  # large checkpoints are cleaned up
