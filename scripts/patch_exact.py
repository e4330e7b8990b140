"""Rule patch_exact: exact patching of every SAE latent and error node, both modes.

Inputs: ``pairs``, ``saes`` (in ``hooks`` order; none for pretrained SAEs), toy only:
``model``. Params: ``patch``, ``model``, ``sae``, ``hooks``. Output: ``exact``
(results/{experiment}/patch/exact.h5).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.patch.stages import patch_exact_stage

    patch_exact_stage(
        snakemake.params.patch,
        snakemake.params.model,
        snakemake.input.get("model"),
        snakemake.params.sae,
        snakemake.params.hooks,
        list(snakemake.input.saes),
        snakemake.input.pairs,
        snakemake.output.exact,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
