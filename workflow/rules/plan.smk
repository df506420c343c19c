rule plan:
    input:
        list(FILES.values()),
    output:
        tsv=f"{OUT}/plan.tsv",
        overview=f"{OUT}/plan.json",
    log:
        f"{OUT}/logs/plan.log",
    # before any embed job: they read the plan at run time to find their preferred device
    priority: max(map(os.path.getsize, FILES.values()), default=0) + 1
    conda:
        ENV
    params:
        names=list(FILES),
        # re-plan (only the plan) when the device pool is configured differently
        pool=[config["device"], config["gpus"], config["cpu_slots"]],
    script:
        "../../scripts/plan.py"
