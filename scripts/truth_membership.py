"""Rule truth_membership (toy only): which features truly belong to each category.

Inputs: ``codes``, ``activations`` (the described prompt set), ``truth`` (world/truth.json).
Params: ``categories`` (config labels.categories, each with ``token_classes``), ``hook``,
``threshold``. Output: ``membership`` (results/{experiment}/labels/truth_membership.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.classify import resolve_categories
    from saeflow.labels.describe import membership_from_files
    from saeflow.core.io import write_json

    cats = resolve_categories(snakemake.params.categories)
    members = membership_from_files(
        snakemake.input.codes,
        snakemake.input.activations,
        snakemake.input.truth,
        snakemake.params.hook,
        {n: c["token_classes"] for n, c in cats.items()},
        snakemake.params.threshold,
    )
    write_json(
        snakemake.output.membership,
        {"threshold": snakemake.params.threshold, "members": members},
        {"categories": cats, "threshold": snakemake.params.threshold},
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
