"""Rule patch_circuit: the sparse feature circuit (nodes, edges, checks) in circuit.json.

Inputs: ``pairs``, ``saes`` (in ``hooks`` order; none for pretrained SAEs), ``atp``,
``descriptions`` (optional), toy only: ``model``. Params: ``patch``, ``model``, ``sae``,
``hooks``. Output: ``circuit`` (results/{experiment}/patch/circuit.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.core.bundle import ModelSAEs
    from saeflow.patch.stages import patch_circuit_stage

    patch_circuit_stage(
        ModelSAEs.from_rule(snakemake),
        snakemake.params.patch,
        snakemake.input.pairs,
        snakemake.input.atp,
        snakemake.input.descriptions,
        snakemake.output.circuit,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
