"""Rule truth_membership (toy only): which features truly belong to each category.

Inputs: ``codes``, ``activations`` (the described prompt set), ``truth`` (world/truth.json).
Params: ``categories`` (config labels.categories, each with ``token_classes``), ``hook``,
``threshold``. Output: ``membership`` (results/{experiment}/labels/truth_membership.json).
"""

from saeflow.core.runtime import rule_main


def body(smk) -> None:
    from saeflow.labels.classify import resolve_categories
    from saeflow.labels.describe import membership_from_files
    from saeflow.core.io import write_json

    cats = resolve_categories(smk.params.categories)
    members = membership_from_files(smk.input.codes, smk.input.activations, smk.input.truth,
                                    smk.params.hook, {n: c["token_classes"] for n, c in cats.items()},
                                    smk.params.threshold)
    write_json(smk.output.membership, {"threshold": smk.params.threshold, "members": members},
               {"categories": cats, "threshold": smk.params.threshold})


rule_main(body, snakemake)  # noqa: F821
