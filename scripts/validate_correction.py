"""Rule validate_correction (toy only): the LPF corrections against planted label noise.

Inputs: ``model`` (model.pt), ``saes`` (the labelled hook's SAE folder), ``activations``
(eval prompts), ``descriptions``, ``membership`` (truth_membership.json). Params: ``model``,
``sae``, ``hooks`` (the labelled hook), ``ablation`` (labels.ablation), ``sample``
(labels.sample), ``validation`` (labels.validation), ``methods``
(labels.correction.methods). Output: ``validation``
(results/{experiment}/correction/validation.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.core.bundle import ModelSAEs
    from saeflow.labels.validation import validate_correction_stage

    params = snakemake.params
    validate_correction_stage(
        ModelSAEs.from_rule(snakemake),
        snakemake.input.activations,
        snakemake.input.descriptions,
        snakemake.input.membership,
        {
            "ablation": params.ablation,
            "sample": params.sample,
            "validation": params.validation,
            "methods": params.methods,
        },
        snakemake.output.validation,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
