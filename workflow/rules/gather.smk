# a sharded file's one output, from its shards in order, on no device
rule gather:
    input:
        shards=lambda wildcards: [
            LAYOUT.shard_embedding(wildcards.name, label)
            for label in labels(SHARDS[wildcards.name])
        ],
    output:
        embeddings=LAYOUT.embedding("{name}"),
    log:
        record=LAYOUT.record("{name}"),
    wildcard_constraints:
        name=SHARDED,
    retries: 2
    conda:
        ENV
    resources:
        attempt=lambda wildcards, attempt: attempt,
    params:
        fasta=lambda wildcards: FILES[wildcards.name],
        labels=lambda wildcards: labels(SHARDS[wildcards.name]),
        # one dict: long_sequences enters it only where it changes the numbers
        settings=lambda wildcards: gather_settings(wildcards),
    script:
        "../../scripts/gather.py"
