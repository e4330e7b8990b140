"""Rule fig_confusion. Figure: classifier-vs-human confusion matrix per category.

Inputs: ``agreements`` (labels/agreement/{category}.json, config order). Params:
``categories``. Output: ``png`` (results/{experiment}/figures/labels_confusion.png).
"""

from saeflow.core.runtime import rule_main


def body(smk) -> None:
    from saeflow.core.io import read_json
    from saeflow.labels.plots import plot_confusion

    plot_confusion({c: read_json(p) for c, p in zip(smk.params.categories, smk.input.agreements)},
                   smk.output.png)


rule_main(body, snakemake)  # noqa: F821
