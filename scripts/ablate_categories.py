"""Rule ablate_categories: loss with each category's features zero-ablated (SAE + error term).

Inputs: ``model`` (model.pt; toy only), ``saes`` (the labelled hook's SAE folder; none for
pretrained SAEs), ``activations`` (eval prompts), ``descriptions``, ``classified`` (one per
category, in config order), toy only: ``membership`` (the true members of each category).
Params: ``model``, ``sae``, ``hooks`` (the labelled hook), ``categories`` (names, in the
order of ``classified``), ``ablation`` ({eval, batch_size, seed, device, other_size,
other_draws}). Output: ``ablation`` (results/{experiment}/labels/ablation.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.core.bundle import ModelSAEs
    from saeflow.labels.ablation import ablate_categories_stage

    ablate_categories_stage(
        ModelSAEs.from_rule(snakemake),
        snakemake.input.activations,
        snakemake.input.descriptions,
        dict(zip(snakemake.params.categories, snakemake.input.classified)),
        snakemake.params.ablation,
        dict(snakemake.input.items()).get("membership"),
        snakemake.output.ablation,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
