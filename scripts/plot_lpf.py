"""Rule fig_lpf. Figure: naive vs corrected loss per feature with 95% intervals (truth in the toy).

Inputs: ``result`` (correction/{method}.json), toy only: ``ablation`` (for the true LPF).
Output: ``png`` (results/{experiment}/figures/lpf_{method}.png).
"""

from saeflow.core.runtime import rule_main


def body(smk) -> None:
    from saeflow.labels.correction import true_lpf
    from saeflow.core.io import read_json
    from saeflow.labels.plots import plot_lpf

    inputs = dict(smk.input.items())
    truth = true_lpf(read_json(inputs["ablation"])) if "ablation" in inputs else None
    plot_lpf(read_json(smk.input.result), smk.output.png, truth)


rule_main(body, snakemake)  # noqa: F821
