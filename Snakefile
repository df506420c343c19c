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


# The embeddings are targets themselves, not only inputs of the summary: Snakemake does not
# rebuild a missing intermediate file while the files made from it are up to date, and a
# deleted or failed embedding must always be redone.
rule all:
    default_target: True
    input:
        expand(f"{OUT}/embeddings/{{name}}.pt", name=FILES),
        f"{OUT}/plan.tsv",
        f"{OUT}/summary.json",
        f"{OUT}/failed_files.txt",


include: "workflow/rules/common.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/summary.smk"
