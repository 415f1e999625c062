"""ablationlab: a reproducible CNN ablation study (library behind the Snakemake pipeline)."""

__version__ = "0.1.0"
