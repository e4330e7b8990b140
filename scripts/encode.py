"""Rule encode: encode every SAE hook's activations into sparse codes plus feature statistics.

Inputs: ``acts`` (activations/{prompt_set}.h5), ``saes`` (in ``hooks`` order; none for
pretrained SAEs). Params: ``sae``, ``encoding``, ``hooks``, ``device``. Output: ``codes``
(results/{experiment}/codes/{prompt_set}.h5).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.core.bundle import ModelSAEs
    from saeflow.encode import encode_stage

    encode_stage(
        ModelSAEs.from_rule(snakemake),
        snakemake.input.acts,
        snakemake.params.encoding,
        snakemake.params.device,
        snakemake.output.codes,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
