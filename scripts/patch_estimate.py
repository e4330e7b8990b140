"""Rule patch_estimate: one node estimator ({estimator}: atp, ig, graddrop or qkfix; registry
saeflow.patch.estimators) over every SAE latent and error node, with and without the SAE
error term.

Inputs: ``pairs``, ``saes`` (in ``hooks`` order; none for pretrained SAEs), toy only:
``model``. Params: ``patch``, ``model``, ``sae``, ``hooks``. Wildcard: ``estimator``. Output:
``h5`` (results/{experiment}/patch/{estimator}.h5, atp.h5's layout).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.core.bundle import ModelSAEs
    from saeflow.patch.stages import patch_estimate_stage

    patch_estimate_stage(
        snakemake.wildcards.estimator,
        ModelSAEs.from_rule(snakemake),
        snakemake.params.patch,
        snakemake.input.pairs,
        snakemake.output.h5,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
