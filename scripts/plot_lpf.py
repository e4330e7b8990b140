"""Rule plot_lpf: figure lpf_{method}.png, naive vs corrected loss per feature, 95% intervals (toy:
truth).

Inputs: ``result`` (correction/{method}.json), toy only: ``ablation`` (for the true LPF).
Output: ``png`` (results/{experiment}/figures/lpf_{method}.png).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.plots import plot_lpf_stage

    inputs = dict(snakemake.input.items())
    plot_lpf_stage(snakemake.input.result, snakemake.output.png, inputs.get("ablation"))


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
