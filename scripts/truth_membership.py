"""Rule truth_membership (toy only): which features truly belong to each category.

Inputs: ``codes``, ``activations`` (the described prompt set), ``truth`` (world/truth.json).
Params: ``categories`` (config labels.categories, each with ``token_classes``), ``hook``,
``threshold``. Output: ``membership`` (results/{experiment}/labels/truth_membership.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.describe import truth_membership_stage

    truth_membership_stage(
        snakemake.input.codes,
        snakemake.input.activations,
        snakemake.input.truth,
        snakemake.params.hook,
        snakemake.params.categories,
        snakemake.params.threshold,
        snakemake.output.membership,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
