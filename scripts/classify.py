"""Rule classify: label every description related / not-related for one category.

Input: ``descriptions``. Params: ``category`` (wildcard), ``categories`` (config
labels.categories or "toy"). Output: ``classified``
(results/{experiment}/labels/classified/{category}.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.classify import classify, resolve_categories
    from saeflow.formats.descriptions import read_descriptions
    from saeflow.core.io import write_json

    options = resolve_categories(snakemake.params.categories)[snakemake.params.category]
    payload = classify(
        read_descriptions(snakemake.input.descriptions), snakemake.params.category, options
    )
    write_json(snakemake.output.classified, payload, options)


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
