"""Rule classify: label every description related / not-related for one category.

Input: ``descriptions``. Params: ``category`` (wildcard), ``categories`` (config
labels.categories or "toy"), ``min_score`` (config labels.describe.min_score: descriptions
scoring below it are left unlabelled). Output: ``classified``
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
        snakemake.params.min_score,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
