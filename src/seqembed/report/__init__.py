"""What the user reads: the summary and its table, the timeline picture, the live view and its
display. Pure functions of the per-file records and progress files, run in Snakemake's process."""
