"""saeflow: the library behind a Snakemake DAG for sparse-autoencoder interpretability.

One module per stage; rule scripts in ``scripts/`` are thin glue around these functions.
Nothing here imports torch at package import time, so the Snakefile can stay light.
"""

__version__ = "0.1.0"
