"""Rule train_sae: train one sae-lens SAE on a hook of the toy model (offline, wandb off).

Inputs: ``model`` (model/), ``train`` (prompts/train.jsonl). Params: ``sae``, ``seed``,
``device``. Output: ``sae`` (results/{experiment}/sae/{hook}/ in sae-lens's own format).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.toy.train_saes import train_sae_stage

    train_sae_stage(
        snakemake.input.model,
        snakemake.input.train,
        snakemake.wildcards.hook,
        snakemake.params.sae,
        snakemake.params.seed,
        snakemake.params.device,
        snakemake.output.sae,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
