"""Rule patch_atp: SAE-latent attribution patching, with and without the SAE error term.

Inputs: ``pairs``, ``saes`` (in ``hooks`` order; none for pretrained SAEs), toy only:
``model``. Params: ``patch``, ``model``, ``sae``, ``hooks``. Output: ``atp``
(results/{experiment}/patch/atp.h5).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.patch.stages import patch_estimator_stage

    patch_estimator_stage(
        "atp",
        snakemake.params.patch,
        snakemake.params.model,
        snakemake.input.get("model"),
        snakemake.params.sae,
        snakemake.params.hooks,
        list(snakemake.input.saes),
        snakemake.input.pairs,
        snakemake.output.atp,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
