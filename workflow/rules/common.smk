import os

from seqembed.backends import resolve_precision
from seqembed.devices import gpu_pool

ENV = "../../envs/seqembed.yaml"

# decided the way the jobs decide it (device auto: GPUs when any are visible); a cluster
# executor runs the jobs on GPU nodes, whatever the submitting host has
ON_GPU = config["device"] == "cuda" or (
    config["device"] == "auto"
    and (not workflow.local_exec or bool(gpu_pool(config["gpus"])))
)
# what precision auto means here: the numbers differ between fp16 and fp32, so the resolved
# value is what makes an embedding stale, not the word "auto"
PRECISION = resolve_precision(config["precision"], "cuda" if ON_GPU else "cpu")
# one thread per GPU job (the GPU does the work); on the CPU the cores are shared out among
# cpu_slots concurrent jobs
EMBED_THREADS = 1 if ON_GPU else max(1, (workflow.cores or 1) // config["cpu_slots"])


wildcard_constraints:
    name=r"[^/]+",


def input_size(wildcards):
    """Embed priority: the largest files start first (longest-processing-time order); the
    size in bytes stands in for the residues, known without reading the file."""
    return os.path.getsize(FILES[wildcards.name])


# the plan first, then the files largest first
PLAN_PRIORITY = max(map(os.path.getsize, FILES.values()), default=0) + 1

