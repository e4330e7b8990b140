"""Rule plot_confusion: figure confusion.png, classifier-vs-human confusion matrix per category.

Inputs: ``agreements`` (labels/agreement/{category}.json, config order). Params:
``categories``. Output: ``png`` (results/{experiment}/figures/confusion.png).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.plots import plot_confusion_stage

    plot_confusion_stage(
        dict(zip(snakemake.params.categories, snakemake.input.agreements)),
        snakemake.output.png,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
