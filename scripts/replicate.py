"""Rule replicate (toy only): the headline numbers of one replicate of the whole DAG.

Inputs: replicate 0: every target of ``all`` (the main run); others: none. Params:
``config`` (the study's whole config), ``snakefile``. Wildcard ``replicate``. Output:
``headline`` (results/{experiment}/replicates/rep{replicate}/headline.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.toy.replicates import replicate_stage

    replicate_stage(
        snakemake.params.config,
        int(snakemake.wildcards.replicate),
        snakemake.params.snakefile,
        snakemake.threads,
        snakemake.output.headline,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
