"""Rule ablate_categories: loss with each category's features zero-ablated (SAE + error term).

Inputs: ``model`` (model.pt), ``sae`` (sae/{hook}/cfg.json), ``activations`` (eval prompts),
``descriptions``, ``classified`` (one per category, in config order), toy only:
``membership`` (the true members of each category). Params: ``model``, ``sae``, ``hook``,
``categories`` (names, in the order of ``classified``), ``ablation`` ({eval, batch_size,
seed, device, other_size, other_draws}). Output: ``ablation``
(results/{experiment}/labels/ablation.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.ablation import ablate_categories_stage

    inputs = dict(snakemake.input.items())
    ablate_categories_stage(
        snakemake.params.model,
        inputs.get("model"),
        snakemake.params.sae,
        snakemake.params.hook,
        inputs.get("sae"),
        snakemake.input.activations,
        snakemake.input.descriptions,
        dict(zip(snakemake.params.categories, snakemake.input.classified)),
        snakemake.params.ablation,
        inputs.get("membership"),
        snakemake.output.ablation,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
