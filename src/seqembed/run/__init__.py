"""What runs in Snakemake's own process, once per run: configuration, the plan and its device
assignment, the pre-flight. Never imports torch (the pre-flight runs its checks in a child)."""
