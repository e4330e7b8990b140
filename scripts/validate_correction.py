"""Rule validate_correction (toy only): the LPF corrections against planted label noise.

Inputs: ``model`` (model.pt), ``sae`` (sae/{hook}), ``activations`` (eval prompts),
``descriptions``, ``membership`` (truth_membership.json). Params: ``model``, ``sae``,
``hook``, ``ablation`` (labels.ablation), ``sample`` (labels.sample), ``validation``
(labels.validation), ``methods`` (labels.correction.methods). Output: ``validation``
(results/{experiment}/correction/validation.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.validation import validate_correction_stage

    inputs = dict(snakemake.input.items())
    validate_correction_stage(
        snakemake.params.model,
        inputs.get("model"),
        snakemake.params.sae,
        snakemake.params.hook,
        inputs.get("sae"),
        snakemake.input.activations,
        snakemake.input.descriptions,
        snakemake.input.membership,
        snakemake.params.ablation,
        snakemake.params.sample,
        snakemake.params.validation,
        snakemake.params.methods,
        snakemake.output.validation,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
