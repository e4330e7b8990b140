"""Rule plot_lpf: figure lpf_{method}.png, naive vs corrected loss per feature, 95% intervals (toy:
truth).

Inputs: ``result`` (correction/{method}.json), toy only: ``ablation`` (for the true LPF).
Output: ``png`` (results/{experiment}/figures/lpf_{method}.png).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.correction import true_lpf
    from saeflow.core.io import read_json
    from saeflow.labels.plots import plot_lpf

    inputs = dict(snakemake.input.items())
    truth = true_lpf(read_json(inputs["ablation"])) if "ablation" in inputs else None
    plot_lpf(read_json(snakemake.input.result), snakemake.output.png, truth)


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
