"""One embed job, the thin per-file process Snakemake starts: input check, device claim,
attempts and their records, progress. It hands the computing to a worker and never imports
torch (except in the per-file mode, where it is its own worker)."""
