"""Rule plot_probe_accuracy: figure probe_accuracy.png, probe accuracy by layer and input kind
(saeflow.probe.plots.plot_probe_accuracy_stage).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.probe.plots import plot_probe_accuracy_stage

    plot_probe_accuracy_stage(snakemake.input.summary, snakemake.output[0])


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
