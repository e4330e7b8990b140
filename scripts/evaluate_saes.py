"""Rule evaluate_saes: SAEBench's core metrics of each SAE (L0, explained variance, loss and KL
spliced and zero-ablated vs the model alone, dead and dense latents) and its latents' firing
counts.

Inputs: ``saes`` (in ``hooks`` order; none for pretrained SAEs), ``prompts`` (the first
prompt set), toy only: ``model``. Params: ``sae``, ``model``, ``device``, ``hooks``. Outputs:
``metrics`` (results/{experiment}/sae/metrics.json), ``density``
(results/{experiment}/sae/density.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.core.bundle import ModelSAEs
    from saeflow.evaluate import evaluate_saes_stage

    evaluate_saes_stage(
        ModelSAEs.from_rule(snakemake),
        snakemake.input.prompts,
        snakemake.params.device,
        snakemake.output.metrics,
        snakemake.output.density,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
