"""Imported first by every script: puts the package next to the workflow on sys.path, so a
clone runs without installing it (Snakemake adds this folder to sys.path for `script:` jobs)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
