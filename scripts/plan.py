import _seqembed_path  # noqa: F401

from seqembed.output import write_json
from seqembed.run.plan import make_plan, plan_pool, plan_windows, write_plan
from seqembed.run.tokens import token_counter

snakemake = snakemake  # noqa: F821 - provided by Snakemake
pool = plan_pool(snakemake.config)
files = dict(zip(snakemake.params.names, snakemake.input, strict=True))
rows, overview = make_plan(
    files,
    pool,
    token_counter(dict(snakemake.config)),
    dict(snakemake.params.shards),
    plan_windows(snakemake.config),
)
write_plan(rows, overview, snakemake.output.tsv, snakemake.output.overview)
write_json(snakemake.log[0], overview)  # the rule's log: what was planned and how well
