"""The run's report, even when Snakemake ends without calling a handler.

After the last job Snakemake 9 tidies the working folder (`DAG.cleanup_workdir`, which calls
`os.removedirs` on every empty folder of a missing output) before it calls `onerror`. On an
output folder that refuses it (made immutable, a read-only remount) the PermissionError
escapes, Snakemake prints a traceback and exits 1, and `onerror` never runs: no summary, no
failed_files.txt (docs/upstream.md). So what `onerror` would have said is said when the
process exits, if no handler said it; the exit status stays Snakemake's 1. (A hidden marker
keeping the folders from being empty was weighed and left out: it cannot be put into a
folder that is immutable from the start, and users and tools listing the folder would see
it.)
"""

from __future__ import annotations

import atexit
import sys
from collections.abc import Callable


class LastWord:
    """Armed once the run has started; `said()` by the handlers that reported."""

    def __init__(self) -> None:
        self._report: Callable[[], object] | None = None
        self._said = False

    def arm(self, report: Callable[[], object]) -> None:
        if self._report is None:
            atexit.register(self._at_exit)
        self._report = report

    def said(self) -> None:
        self._said = True

    def _at_exit(self) -> None:
        if self._report is None or self._said:
            return
        self._said = True
        print(
            "seqembed: Snakemake ended before its error handler ran; the report follows",
            file=sys.stderr,
            flush=True,
        )
        try:
            self._report()
        except Exception as error:  # noqa: BLE001 - the last thing this process does
            print(f"seqembed: the report could not be written: {error}", file=sys.stderr)
