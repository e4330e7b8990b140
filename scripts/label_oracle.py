"""Rule label_oracle (toy only): the oracle labels the same sample a human would, from truth.

Inputs: ``descriptions``, ``membership`` (truth_membership.json). Params: ``category``,
``categories``, ``sample`` ({n, seed}). Output: ``labels``
(results/{experiment}/labels/oracle/{category}.json, the `saeflow label` format).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.labelling import label_oracle_stage

    label_oracle_stage(
        snakemake.input.descriptions,
        snakemake.input.membership,
        snakemake.params.category,
        snakemake.params.categories,
        snakemake.params.sample,
        snakemake.output.labels,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
