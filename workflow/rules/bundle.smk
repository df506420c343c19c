# bundle_size: the files in jobs of up to that many (seqembed.bundles), one rule per bundle
# since a rule's outputs share its wildcards; the embed rule's settings, per file
for bundle, names in BUNDLES.items():

    rule:
        name:
            bundle
        input:
            fasta=[FILES[name] for name in names],
        output:
            embeddings=[LAYOUT.embedding(name) for name in names],
        log:
            records=[LAYOUT.record(name) for name in names],
        priority: bundle_bytes(names)
        retries: 2
        conda:
            ENV
        threads: embed_threads
        resources:
            gpu=1,
            attempt=lambda wildcards, attempt: attempt,
        params:
            **OUTPUT_SETTINGS,
            names=names,
            long_sequences=[long_sequences_of(name) for name in names],
        script:
            "../../scripts/embed.py"
