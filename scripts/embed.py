import _seqembed_path  # noqa: F401

from seqembed.embed import EmbedJob, run_or_record_failure

snakemake = snakemake  # noqa: F821 - provided by Snakemake
run_or_record_failure(
    EmbedJob(
        name=snakemake.wildcards.name,
        fasta=snakemake.input.fasta,
        output=snakemake.output.embeddings,
        record=snakemake.log.record,
        config=dict(snakemake.config),
        plan_path=snakemake.params.plan,
        lock_dir=snakemake.params.lock_dir,
        threads=snakemake.threads,
        attempt=snakemake.resources.attempt,
    )
)
