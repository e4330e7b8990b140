"""Rule patch_verify: exact patching of the top AtP latents, false negatives, faithfulness and
completeness curves, and the top latents' activations.

Inputs: ``pairs``, ``saes``, ``atp``, ``descriptions`` (optional), toy only: ``model``.
Params: ``patch``, ``model``, ``sae``, ``hooks``. Outputs: ``verify``, ``faithfulness``,
``top_latents`` (results/{experiment}/patch/*.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.core.bundle import ModelSAEs
    from saeflow.patch.stages import patch_verify_stage

    patch_verify_stage(
        ModelSAEs.from_rule(snakemake),
        snakemake.params.patch,
        snakemake.input.pairs,
        snakemake.input.atp,
        snakemake.input.descriptions,
        snakemake.output.verify,
        snakemake.output.faithfulness,
        snakemake.output.top_latents,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
