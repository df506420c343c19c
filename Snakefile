"""seqembed: language-model embeddings for many FASTA files, one job per file.

Quick start: `make demo`. Configuration: config/config.yaml (every key documented there).
"""

import sys
from pathlib import Path

# The package lives next to this file; no installation needed to run from a clone.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from seqembed.config import ConfigError, input_files, validate_config


# the documented defaults travel with the workflow; --configfile / --config override them
configfile: Path(workflow.basedir) / "config/config.yaml"


try:
    config.update(
        validate_config(
            config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"
        )
    )
    FILES = input_files(config)
except ConfigError as error:
    sys.exit(f"seqembed: {error}")

OUT = config["output_dir"]


rule all:
    default_target: True
    input:
        f"{OUT}/plan.tsv",
        f"{OUT}/summary.json",
        f"{OUT}/failed_files.txt",


include: "workflow/rules/common.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/summary.smk"
