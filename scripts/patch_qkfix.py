"""Rule patch_qkfix: AtP* QK-fixed estimates of every SAE latent and error node (attention
patterns recomputed exactly on each node's direct path), with and without the SAE error term.

Inputs: ``pairs``, ``saes`` (in ``hooks`` order; none for pretrained SAEs), toy only:
``model``. Params: ``patch``, ``model``, ``sae``, ``hooks``. Output: ``qkfix``
(results/{experiment}/patch/qkfix.h5, atp.h5's layout).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.patch.stages import patch_estimator_stage

    patch_estimator_stage(
        "qkfix",
        snakemake.params.patch,
        snakemake.params.model,
        snakemake.input.get("model"),
        snakemake.params.sae,
        snakemake.params.hooks,
        list(snakemake.input.saes),
        snakemake.input.pairs,
        snakemake.output.qkfix,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
