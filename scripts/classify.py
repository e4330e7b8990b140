"""Rule classify: label every description related / not-related for one category.

Input: ``descriptions``. Params: ``category`` (wildcard), ``categories`` (config
labels.categories or "toy"). Output: ``classified``
(results/{experiment}/labels/classified/{category}.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.classify import classify_stage

    classify_stage(
        snakemake.input.descriptions,
        snakemake.params.category,
        snakemake.params.categories,
        snakemake.output.classified,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
