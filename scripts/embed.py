import _seqembed_path  # noqa: F401

from seqembed.job.attempts import run_or_record_failure
from seqembed.job.embed import EmbedJob
from seqembed.layout import RunLayout

snakemake = snakemake  # noqa: F821 - provided by Snakemake
layout = RunLayout(snakemake.config["output_dir"], snakemake.config["output_format"])
run_or_record_failure(
    EmbedJob(
        name=snakemake.wildcards.name,
        fasta=snakemake.input.fasta,
        output=snakemake.output.embeddings,
        record=snakemake.log.record,
        config=dict(snakemake.config),
        plan_path=layout.plan_tsv,
        state_dir=layout.state,
        logs_dir=layout.worker_logs,
        settings=dict(snakemake.params),
        threads=snakemake.threads,
        attempt=snakemake.resources.attempt,
    )
)
