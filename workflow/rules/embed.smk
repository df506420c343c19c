rule embed:
    input:
        fasta=lambda wildcards: FILES[wildcards.name],
    output:
        embeddings=LAYOUT.embedding("{name}"),
    # the per-file record: kept by Snakemake when the job fails, so failures are reported
    log:
        record=LAYOUT.record("{name}"),
    # a sharded file's output is the gather's (gather.smk)
    wildcard_constraints:
        name=WHOLE,
    priority: input_size
    # a crashed job (killed, segfault, lost node) gets another device; failures that would
    # repeat (bad input, OOM on one sequence) are repeated by the retry without recomputing
    retries: 2
    conda:
        ENV
    threads: embed_threads
    resources:
        gpu=1,
        attempt=lambda wildcards, attempt: attempt,
    # exactly the settings that change the numbers (common.smk)
    params:
        **OUTPUT_SETTINGS,
        long_sequences=LONG_SEQUENCES,
    script:
        "../../scripts/embed.py"


# one shard of a large file: an embed job like any other, whose output the gather joins and
# Snakemake deletes once gathered (the other shards' outputs of a failed file stay, so a rerun
# redoes only the failed ones)
use rule embed as embed_shard with:
    output:
        embeddings=temp(LAYOUT.shard_embedding("{name}", "{shard}")),
    log:
        record=LAYOUT.shard_record("{name}", "{shard}"),
    wildcard_constraints:
        name=SHARDED,
        shard=r"\d+-of-\d+",
    params:
        **OUTPUT_SETTINGS,
        long_sequences=LONG_SEQUENCES,
        # the bytes of the file whose records the shard owns, decided when the workflow is read
        section=lambda wildcards: section(FILES[wildcards.name], wildcards.shard),
