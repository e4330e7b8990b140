"""Rule label_oracle (toy only): the oracle labels the same sample a human would, from truth.

Inputs: ``descriptions``, ``membership`` (truth_membership.json). Params: ``category``,
``categories``, ``sample`` ({n, seed}). Output: ``labels``
(results/{experiment}/labels/oracle/{category}.json, the `saeflow label` format).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.classify import resolve_categories
    from saeflow.core.io import read_json
    from saeflow.labels.labelling import oracle_labels

    question = resolve_categories(snakemake.params.categories)[snakemake.params.category][
        "question"
    ]
    members = read_json(snakemake.input.membership)["members"][snakemake.params.category]
    oracle_labels(
        snakemake.output.labels,
        snakemake.input.descriptions,
        snakemake.params.category,
        question,
        members,
        snakemake.params.sample["n"],
        snakemake.params.sample["seed"],
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
