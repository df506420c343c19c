rule summary:
    input:
        embeddings=[LAYOUT.embedding(name) for name in FILES],
        plan=LAYOUT.plan_json,
    output:
        summary=LAYOUT.summary,
        failed=LAYOUT.failed,
    log:
        f"{LAYOUT.output_dir}/logs/summary.log",
    conda:
        ENV
    params:
        files=FILES,
    script:
        "../../scripts/summary.py"
