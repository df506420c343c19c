rule embed:
    input:
        fasta=lambda wildcards: FILES[wildcards.name],
    output:
        embeddings=f"{OUT}/embeddings/{{name}}.pt",
    log:
        record=f"{OUT}/records/{{name}}.json",
    priority: input_size
    conda:
        ENV
    threads: embed_threads()
    resources:
        gpu=1,
        attempt=lambda wildcards, attempt: attempt,
    # exactly the settings that change the numbers: editing one reruns every file; gpus,
    # toks_per_batch and verbosity are read from config and never make a file stale
    params:
        model=config["model"],
        layers=config["layers"],
        truncation=config["truncation"],
        precision=config["precision"],
        output_layout=config["output_layout"],
        plan=f"{OUT}/plan.tsv",
        lock_dir=LOCK_DIR,
    script:
        "../../scripts/embed.py"
