rule summary:
    input:
        embeddings=expand(f"{OUT}/embeddings/{{name}}.pt", name=FILES),
        plan=rules.plan.output.overview,
    output:
        summary=f"{OUT}/summary.json",
        failed=f"{OUT}/failed_files.txt",
    log:
        f"{OUT}/logs/summary.log",
    conda:
        ENV
    params:
        names=list(FILES),
        records=f"{OUT}/records",
    script:
        "../../scripts/summary.py"
