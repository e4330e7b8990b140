"""Rule evaluate_saes: L0, explained variance and answer loss with each SAE spliced in vs without.

Inputs: ``saes`` (in ``hooks`` order; none for pretrained SAEs), ``prompts`` (the first
prompt set), toy only: ``model``. Params: ``sae``, ``model``, ``device``, ``hooks``. Output:
``metrics`` (results/{experiment}/sae/metrics.json).
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
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
