import _seqembed_path  # noqa: F401

from seqembed.summary import report_run

snakemake = snakemake  # noqa: F821 - provided by Snakemake
report_run(
    snakemake.params.records,
    snakemake.params.names,
    plan_overview=snakemake.input.plan,
    json_path=snakemake.output.summary,
    failed_path=snakemake.output.failed,
)
