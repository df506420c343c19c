"""Which files a change of `long_sequences` or `window_overlap` makes stale: only those holding
a sequence longer than the window (the truncation). The others' outputs are the same either
way, and stay.

Snakemake reruns a job when the set of its params' values changed. The embed rule's
`long_sequences` param is therefore the truncation itself, a value the set already holds, for
a file without a long sequence and whenever long sequences are cut (the default, as every
output made before this setting existed); and ("windows", overlap) for a file with one when
they are computed in windows. Switching either way, or changing the overlap, changes the
params of those files alone. tests/workflow/test_long_sequences.py checks it on Snakemake.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from seqembed.fasta import fasta_stats


def holds_long_sequence(fasta: str | os.PathLike, record: str | os.PathLike, window: int) -> bool:
    """Read from the file's record when it finished with this window (a record counts its
    cut and its windowed sequences), else from the file itself (one pass, no strings)."""
    try:
        done = json.loads(Path(record).read_text())
        if done.get("status") == "done" and done.get("settings", {}).get("truncation") == window:
            return done.get("truncated_sequences", 0) + done.get("windowed_sequences", 0) > 0
    except (OSError, ValueError, AttributeError):
        pass
    return fasta_stats(fasta).longest > window


def long_sequence_param(config: dict, fasta: str, record: str):
    """The embed rule's `long_sequences` param for one file (see the module's doc)."""
    window = config["truncation"]
    if config["long_sequences"] == "windows" and holds_long_sequence(fasta, record, window):
        return ["windows", config["window_overlap"]]
    return window
