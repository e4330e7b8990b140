"""Rule train_sae: train the SAE (or transcoder) of one hook with sae-lens's runner over the
corpus, for any model (offline, wandb off); a killed job resumes from its last checkpoint.

Inputs: toy ``model`` (model/) or a local checkpoint's ``model_files``, ``corpus`` (a file or
folder; absent for a cached dataset's name). Params: ``sae``, ``model``, ``corpus``, ``seed``,
``device``. Output: ``sae`` (results/{experiment}/sae/{hook}/ in sae-lens's own format).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.core.bundle import ModelSAEs
    from saeflow.sae.train import train_sae_stage

    train_sae_stage(
        ModelSAEs.from_rule(snakemake),
        snakemake.wildcards.hook,
        snakemake.params.corpus,
        snakemake.params.sae,
        snakemake.params.seed,
        snakemake.params.device,
        snakemake.output.sae,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
