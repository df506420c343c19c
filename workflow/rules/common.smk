import functools
import re

from seqembed.compute.backends import resolve_precision
from seqembed.devices import gpu_pool
from seqembed.run.config import output_settings
from seqembed.run.long_sequences import long_sequence_param
from seqembed.bundles import file_sizes, make_bundles
from seqembed.shards import labels, section, shard_counts, shard_regex

ENV = "../../envs/seqembed.yaml"

# decided the way the jobs decide it (device auto: GPUs when any are visible). Which
# executor runs the jobs is not known while the workflow is read: on a cluster, whose
# submitting host usually has no GPU, the documented setting is device: cuda
ON_GPU = config["device"] == "cuda" or (
    config["device"] == "auto" and bool(gpu_pool(config["gpus"]))
)
# what precision auto means here: the numbers differ between fp16 and fp32, so the resolved
# value is what makes an embedding stale, not the word "auto"
PRECISION = resolve_precision(config["precision"], "cuda" if ON_GPU else "cpu")
# exactly the settings that change the outputs: editing one reruns every file (they are the
# embed rule's params); gpus, toks_per_batch, worker and verbosity never make a file stale
OUTPUT_SETTINGS = output_settings(config, PRECISION)


def long_sequences(wildcards):
    """long_sequences and window_overlap make stale only the files holding a sequence longer
    than the truncation (seqembed.run.long_sequences)."""
    return long_sequences_of(wildcards.name)


# the embed rule's long_sequences param: the same value for every file but with windows, and
# then a function of the file (one call per job, 50,000 while a DAG of as many files is built)
LONG_SEQUENCES = (
    long_sequences if config["long_sequences"] == "windows" else config["truncation"]
)


@functools.cache
def long_sequences_of(name):
    """Once per file while the workflow is read: its shards and its gather ask too."""
    return long_sequence_param(config, FILES[name], LAYOUT.record(name))


def gather_settings(wildcards):
    """The gather's settings: OUTPUT_SETTINGS, and long_sequences where it changes the
    numbers (a truncation value means it does not)."""
    value = long_sequences(wildcards)
    if value == config["truncation"]:
        return OUTPUT_SETTINGS
    return {**OUTPUT_SETTINGS, "long_sequences": value}


def embed_threads(wildcards):
    """One thread per GPU job (the GPU does the work), and on a cluster (the profile asks
    for CPUs per GPU); on this host's CPU the cores are shared out among cpu_slots jobs.
    A function: the executor is known only once jobs are scheduled."""
    if ON_GPU or not workflow.local_exec:
        return 1
    return max(1, (workflow.cores or 1) // config["cpu_slots"])


wildcard_constraints:
    name=r"[^/]+",


# name -> bytes, stat'ed once: the shards, the jobs' and the bundles' priorities use it
SIZES = file_sizes(FILES)
# name -> shards, for the files computed in more than one (config shard_size): known from
# the files' sizes alone, so every reading of the workflow finds the same
SHARDS = shard_counts(FILES, config["shard_size"], SIZES)
# the names whose output the gather writes, and (by a look-ahead over the rest of the output's
# name, or over the name alone) those whose embed job writes it
SHARDED = shard_regex(SHARDS)
# rule name -> the files it computes, for the other files in jobs of up to bundle_size
# (seqembed.bundles): with bundles, every file that is not sharded is in one
BUNDLES = make_bundles(SIZES, config["bundle_size"], SHARDS)
WHOLE = (
    r"(?!)"
    if BUNDLES
    else rf"(?!(?:{SHARDED})(?:\.{re.escape(LAYOUT.output_format)})?$)[^/]+"
)


def input_size(wildcards):
    """Embed priority: the largest jobs start first (longest-processing-time order); the
    size in bytes stands in for the residues, known without reading the file, and a shard
    counts its share of it."""
    return SIZES[wildcards.name] // SHARDS.get(wildcards.name, 1)


def bundle_bytes(names):
    """A bundle's priority: its files' bytes, as a file's is its own."""
    return sum(SIZES[name] for name in names)


# the plan first, then the files (or bundles) largest first
PLAN_PRIORITY = (
    max([*SIZES.values(), *map(bundle_bytes, BUNDLES.values())], default=0) + 1
)
