rule embed:
    input:
        fasta=lambda wildcards: FILES[wildcards.name],
    output:
        embeddings=LAYOUT.embedding("{name}"),
    # the per-file record: kept by Snakemake when the job fails, so failures are reported
    log:
        record=LAYOUT.record("{name}"),
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
    script:
        "../../scripts/embed.py"
