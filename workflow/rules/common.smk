import os

from seqembed.devices import gpu_pool

ENV = "../../envs/seqembed.yaml"


wildcard_constraints:
    name=r"[^/]+",


def embed_threads():
    """One thread per GPU job (the GPU does the work); on the CPU the cores are shared out
    among cpu_slots concurrent jobs."""
    on_gpu = config["device"] == "cuda" or (
        config["device"] == "auto" and gpu_pool(config["gpus"])
    )
    return 1 if on_gpu else max(1, (workflow.cores or 1) // config["cpu_slots"])


def input_size(wildcards):
    """Embed priority: the largest files start first (longest-processing-time order); the
    size in bytes stands in for the residues, known without reading the file."""
    return os.path.getsize(FILES[wildcards.name])


# the plan first, then the files largest first
PLAN_PRIORITY = max(map(os.path.getsize, FILES.values()), default=0) + 1
