"""Rule label_oracle (toy only): the oracle labels the same sample a human would, from truth.

Inputs: ``descriptions``, ``membership`` (truth_membership.json). Params: ``category``,
``categories``, ``sample`` ({n, seed}). Output: ``labels``
(results/{experiment}/labels/oracle/{category}.json, the `saeflow label` format).
"""

from saeflow.core.runtime import rule_main


def body(smk) -> None:
    from saeflow.labels.classify import resolve_categories
    from saeflow.core.io import read_json
    from saeflow.labels.labelling import oracle_labels

    question = resolve_categories(smk.params.categories)[smk.params.category]["question"]
    members = read_json(smk.input.membership)["members"][smk.params.category]
    oracle_labels(smk.output.labels, smk.input.descriptions, smk.params.category, question,
                  members, smk.params.sample["n"], smk.params.sample["seed"])


rule_main(body, snakemake)  # noqa: F821
