"""Where a run keeps its files under output_dir: one place, used by the rules and the package."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    output_dir: str
    #: the embeddings' file extension: pt or h5 (config key output_format)
    output_format: str = "pt"

    def _path(self, *parts: str) -> str:
        return str(Path(self.output_dir, *parts))

    @property
    def plan_tsv(self) -> str:
        return self._path("plan.tsv")

    @property
    def plan_json(self) -> str:
        return self._path("plan.json")

    @property
    def records(self) -> str:
        return self._path("records")

    @property
    def summary(self) -> str:
        return self._path("summary.json")

    @property
    def timeline(self) -> str:
        return self._path("timeline.png")

    @property
    def failed(self) -> str:
        return self._path("failed_files.txt")

    @property
    def worker_logs(self) -> str:
        """One log per device and host: when each worker started, what it served, why it ended."""
        return self._path("logs", "workers")

    @property
    def state(self) -> str:
        """Shared by the jobs of one run; cleared when a run starts."""
        return self._path(".seqembed", "run")

    # once per input file, twice while the workflow is read (50,000 files: 100,000 calls):
    # strings, not Paths; `name` is a file's name without a folder (run.config.output_name)
    def embedding(self, name: str) -> str:
        return f"{self._embeddings}{name}.{self.output_format}"

    def record(self, name: str) -> str:
        return f"{self._records}{name}.json"

    @functools.cached_property
    def _embeddings(self) -> str:
        return self._path("embeddings") + os.sep

    @functools.cached_property
    def _records(self) -> str:
        return self._path("records") + os.sep

    def shard_embedding(self, name: str, label: str) -> str:
        """A shard's output, until the gather joins it into the file's (seqembed.shards)."""
        return self._path(".seqembed", "shards", name, f"{label}.{self.output_format}")

    def shard_record(self, name: str, label: str) -> str:
        return self._path("records", "shards", name, f"{label}.json")
