"""Rule describe: one description per SAE feature.

Inputs: toy -- ``codes`` (results/{experiment}/codes/{prompt_set}.h5), ``activations`` (same
prompt set), ``model`` (model.pt; its tokenizer/ sits beside it); real SAEs -- ``folder`` of
Neuronpedia explanation exports, or the ``manifest`` of those fetch_neuronpedia downloaded.
Params: ``describe`` (config labels.describe), ``hook``. Output: ``descriptions``
(results/{experiment}/labels/descriptions.json).
"""

from pathlib import Path

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.describe import describe_stage

    inputs = dict(snakemake.input.items())
    describe_stage(
        snakemake.params.describe,
        snakemake.output.descriptions,
        snakemake.params.hook,
        codes=inputs.get("codes"),
        activations=inputs.get("activations"),
        tokenizer_dir=Path(inputs["model"]) / "tokenizer" if "model" in inputs else None,
        folder=inputs.get("folder"),
        manifest=inputs.get("manifest"),
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
