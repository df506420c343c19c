import _seqembed_path  # noqa: F401

from seqembed.layout import RunLayout
from seqembed.summary import report_run

snakemake = snakemake  # noqa: F821 - provided by Snakemake
report_run(RunLayout(snakemake.config["output_dir"]), dict(snakemake.params.files))
