"""Rule describe: one description per SAE feature.

Inputs: toy -- ``codes`` (results/{experiment}/codes/{prompt_set}.h5), ``activations`` (same
prompt set), ``model`` (model.pt; its tokenizer/ sits beside it); real SAEs -- ``folder`` of
Neuronpedia explanation exports, or the ``manifest`` of those fetch_neuronpedia downloaded;
autointerp -- ``codes``, ``activations`` and, for the toy, ``model``. Neuronpedia exports are
checked against the SAE's width, the ``d_sae`` of the same ``codes``. Params: ``describe``
(config labels.describe), ``hook``, ``sae_key`` (the config key naming the SAE, for
messages), ``model`` (config model: autointerp decodes the contexts with its tokenizer).
Output: ``descriptions`` (results/{experiment}/labels/descriptions.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.describe import describe_stage

    describe_stage(
        snakemake.params.describe,
        snakemake.output.descriptions,
        snakemake.params.hook,
        dict(snakemake.input.items()),
        snakemake.params.sae_key,
        snakemake.params.model,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
