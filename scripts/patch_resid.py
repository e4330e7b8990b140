"""Rule patch_resid: clean -> corrupted residual-stream patching over every layer x position.

Inputs: ``pairs`` (pairs JSONL), toy only: ``model``. Params: ``patch``, ``model``. Output:
``resid`` (results/{experiment}/patch/resid.h5).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.core.bundle import ModelSAEs
    from saeflow.patch.stages import patch_resid_stage

    patch_resid_stage(
        ModelSAEs.from_rule(snakemake),
        snakemake.params.patch,
        snakemake.input.pairs,
        snakemake.output.resid,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
