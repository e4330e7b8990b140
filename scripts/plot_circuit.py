"""Rule plot_circuit: the sparse feature circuit as a figure (figures/circuit.png).

Input: ``circuit`` (patch/circuit.json). Output: ``png``.
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.patch.plots import plot_circuit_stage

    plot_circuit_stage(snakemake.input.circuit, snakemake.output.png)


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
