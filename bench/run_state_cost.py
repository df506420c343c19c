"""What seqembed's own bookkeeping costs a job as a run grows: counting an outcome
(`record_outcome`) and asking whether the run was aborted (`abort_reason`, at a job's start,
between batches, and every second in the Snakemake process), after N outcomes of the run.

    .venv/bin/python bench/run_state_cost.py [--before REV]

With `--before REV` the same calls of seqembed.runstate as it was at git revision REV run
side by side (the module is loaded from `git show REV:src/seqembed/runstate.py`). Each figure
is the median of 200 calls on a state folder that already holds N outcomes (successes, every
fiftieth a counted failure, as a long run leaves them); `abort_reason` is asked after another
outcome changed the state, as it is in a running run. docs/benchmarks.md keeps the results.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from seqembed import runstate  # noqa: E402


def module_at(revision: str, folder: Path):
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{revision}:src/seqembed/runstate.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = folder / f"runstate_{revision}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"runstate_{revision}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def median_ms(call, repeats: int = 200) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def costs(module, folder: Path, outcomes: int) -> tuple[float, float]:
    state = folder / f"{module.__name__}-{outcomes}"
    module.reset(state)
    for index in range(outcomes):
        failed = index % 50 == 49
        module.record_outcome(state, f"f{index}", f"f{index}.fa", "OOM" if failed else None, "x")
    count = median_ms(lambda: module.record_outcome(state, "next", "next.fa", None))
    # asked after another job's outcome changed the run's state, as in a running run
    abort = []
    for _ in range(200):
        module.record_outcome(state, "other", "other.fa", None)
        started = time.perf_counter()
        module.abort_reason(state)
        abort.append(time.perf_counter() - started)
    return count, statistics.median(abort) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="a git revision to compare with")
    parser.add_argument("--outcomes", type=int, nargs="+", default=[100, 2000, 10000])
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        modules = {"now": runstate}
        if options.before:
            modules[options.before] = module_at(options.before, folder)
        print(f"{'outcomes':>9} {'version':>10} {'record_outcome ms':>18} {'abort_reason ms':>16}")
        for outcomes in options.outcomes:
            for name, module in modules.items():
                count, abort = costs(module, folder, outcomes)
                print(f"{outcomes:>9,} {name:>10} {count:>18.3f} {abort:>16.3f}")


if __name__ == "__main__":
    main()
