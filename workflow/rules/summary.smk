rule summary:
    input:
        embeddings=EMBEDDINGS,
        plan=LAYOUT.plan_json,
    output:
        summary=LAYOUT.summary,
        failed=LAYOUT.failed,
        timeline=report(
            LAYOUT.timeline, caption="../report/timeline.rst", category="Run summary"
        ),
    log:
        f"{LAYOUT.output_dir}/logs/summary.log",
    # on a cluster: on the submitting host, no allocation needed
    localrule: True
    conda:
        ENV
    params:
        files=FILES,
        unusable=UNUSABLE,
        shards=SHARDS,
    script:
        "../../scripts/summary.py"
