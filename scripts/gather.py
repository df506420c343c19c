import _seqembed_path  # noqa: F401

from seqembed.job.gather import GatherJob, run_gather_job
from seqembed.layout import RunLayout

snakemake = snakemake  # noqa: F821 - provided by Snakemake
layout = RunLayout(snakemake.config["output_dir"], snakemake.config["output_format"])
name = snakemake.wildcards.name
labels = list(snakemake.params.labels)
run_gather_job(
    GatherJob(
        name=name,
        fasta=snakemake.params.fasta,
        output=snakemake.output.embeddings,
        output_format=layout.output_format,
        record=snakemake.log.record,
        state_dir=layout.state,
        labels=labels,
        shards=list(snakemake.input.shards),
        shard_records=[layout.shard_record(name, label) for label in labels],
        settings=dict(snakemake.params.settings),
        attempt=snakemake.resources.attempt,
    )
)
