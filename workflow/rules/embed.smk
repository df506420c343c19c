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
    # exactly the settings that change the numbers: editing one reruns every file; gpus,
    # toks_per_batch and verbosity are read from config and never make a file stale
    params:
        model=config["model"],
        layers=config["layers"],
        truncation=config["truncation"],
        precision=PRECISION,
        output_layout=config["output_layout"],
    script:
        "../../scripts/embed.py"
