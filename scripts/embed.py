import _seqembed_path  # noqa: F401

from seqembed.job.attempts import run_or_record_failure
from seqembed.job.embed import EmbedJob
from seqembed.layout import RunLayout
from seqembed.shards import shard_job_name

snakemake = snakemake  # noqa: F821 - provided by Snakemake
layout = RunLayout(snakemake.config["output_dir"], snakemake.config["output_format"])
settings = dict(snakemake.params)
# the embed_shard rule: one shard of the file, and the bytes whose records it owns
shard = snakemake.wildcards.get("shard")
section = settings.pop("section", None)
run_or_record_failure(
    EmbedJob(
        name=shard_job_name(snakemake.wildcards.name, shard) if shard else snakemake.wildcards.name,
        fasta=snakemake.input.fasta,
        output=snakemake.output.embeddings,
        record=snakemake.log.record,
        config=dict(snakemake.config),
        plan_path=layout.plan_tsv,
        state_dir=layout.state,
        logs_dir=layout.worker_logs,
        settings=settings,
        threads=snakemake.threads,
        attempt=snakemake.resources.attempt,
        shard=shard,
        section=tuple(section) if section else (0, None),
        replaces=layout.embedding(snakemake.wildcards.name) if shard else None,
    )
)
