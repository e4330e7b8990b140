"""Rule patch_exact: exact patching of every SAE latent and error node, both modes.

Inputs: ``pairs``, ``saes`` (in ``hooks`` order; none for pretrained SAEs), toy only:
``model``. Params: ``patch``, ``model``, ``sae``, ``hooks``. Output: ``exact``
(results/{experiment}/patch/exact.h5).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.core.bundle import ModelSAEs
    from saeflow.patch.stages import patch_exact_stage

    patch_exact_stage(
        ModelSAEs.from_rule(snakemake),
        snakemake.params.patch,
        snakemake.input.pairs,
        snakemake.output.exact,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
