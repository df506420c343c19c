import _seqembed_path  # noqa: F401

from seqembed.layout import RunLayout
from seqembed.output import write_text
from seqembed.report.summary import report_run
from seqembed.report.table import render_table

snakemake = snakemake  # noqa: F821 - provided by Snakemake
summary = report_run(
    RunLayout(snakemake.config["output_dir"], snakemake.config["output_format"]),
    dict(snakemake.params.files),
    unusable=dict(snakemake.params.unusable),
    shards=dict(snakemake.params.shards),
)
write_text(snakemake.log[0], render_table(summary) + "\n")  # the table, also kept
