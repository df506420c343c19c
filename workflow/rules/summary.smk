rule summary:
    input:
        embeddings=[LAYOUT.embedding(name) for name in FILES],
        plan=LAYOUT.plan_json,
    output:
        summary=LAYOUT.summary,
        failed=LAYOUT.failed,
        timeline=report(
            LAYOUT.timeline, caption="../report/timeline.rst", category="Run summary"
        ),
    log:
        f"{LAYOUT.output_dir}/logs/summary.log",
    conda:
        ENV
    params:
        files=FILES,
    script:
        "../../scripts/summary.py"
