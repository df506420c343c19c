"""seqembed: language-model embeddings for many FASTA files, one job per file.

The package holds all logic of the workflow and never imports Snakemake, so every
piece can be unit-tested; torch is imported only by the modules that run a model.
"""

__version__ = "0.1.0"
