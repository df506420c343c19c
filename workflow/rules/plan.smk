rule plan:
    input:
        list(FILES.values()),
    output:
        tsv=LAYOUT.plan_tsv,
        overview=LAYOUT.plan_json,
    log:
        f"{LAYOUT.output_dir}/logs/plan.log",
    # before any embed job: they read the plan at run time to find their preferred device
    priority: PLAN_PRIORITY
    # on a cluster: on the submitting host, no allocation needed
    localrule: True
    conda:
        ENV
    params:
        names=list(FILES),
        # re-plan (only the plan) when the device pool or the model is configured differently
        pool=[config["device"], config["gpus"], config["cpu_slots"]],
        # a nucleotide model's tokenizer decides the plan's load (tokens, not letters)
        model=config["model"],
        # shards are placed one by one, as the scheduler places them
        shards=SHARDS,
        # long sequences' windows count what they compute
        windows=[
            config["long_sequences"],
            config["window_overlap"],
            config["truncation"],
        ],
    script:
        "../../scripts/plan.py"
