import _seqembed_path  # noqa: F401

from seqembed.job.attempts import run_or_record_failure
from seqembed.job.bundle import run_bundle
from seqembed.job.embed import EmbedJob
from seqembed.layout import RunLayout
from seqembed.shards import shard_job_name

snakemake = snakemake  # noqa: F821 - provided by Snakemake
layout = RunLayout(snakemake.config["output_dir"], snakemake.config["output_format"])
settings = dict(snakemake.params)
# a bundle rule: its files' names, and each file's own long_sequences, in input order
names = settings.pop("names", None)
long_sequences = settings.pop("long_sequences")
# the embed_shard rule: one shard of the file, and the bytes whose records it owns
shard = snakemake.wildcards.get("shard")
section = settings.pop("section", None)


def job(name, fasta, output, record, long_sequences, **shard_fields):
    return EmbedJob(
        name=name,
        fasta=fasta,
        output=output,
        record=record,
        config=dict(snakemake.config),
        plan_path=layout.plan_tsv,
        state_dir=layout.state,
        logs_dir=layout.worker_logs,
        settings={**settings, "long_sequences": long_sequences},
        threads=snakemake.threads,
        attempt=snakemake.resources.attempt,
        **shard_fields,
    )


if names:
    run_bundle(
        [
            job(*fields)
            for fields in zip(
                names,
                snakemake.input.fasta,
                snakemake.output.embeddings,
                snakemake.log.records,
                long_sequences,
                strict=True,
            )
        ]
    )
else:
    name = snakemake.wildcards.name
    run_or_record_failure(
        job(
            shard_job_name(name, shard) if shard else name,
            snakemake.input.fasta,
            snakemake.output.embeddings,
            snakemake.log.record,
            long_sequences,
            shard=shard,
            section=tuple(section) if section else (0, None),
            replaces=layout.embedding(name) if shard else None,
        )
    )
