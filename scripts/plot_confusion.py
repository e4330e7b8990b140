"""Rule plot_confusion: figure confusion.png, classifier-vs-human confusion matrix per category.

Inputs: ``agreements`` (labels/agreement/{category}.json, config order). Params:
``categories``. Output: ``png`` (results/{experiment}/figures/confusion.png).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.core.io import read_json
    from saeflow.labels.plots import plot_confusion

    plot_confusion(
        {c: read_json(p) for c, p in zip(snakemake.params.categories, snakemake.input.agreements)},
        snakemake.output.png,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
