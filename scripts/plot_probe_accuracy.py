"""Rule plot_probe_accuracy: figure probe_accuracy.png, probe accuracy by layer and input kind
(saeflow.probe.plots.plot_probe_accuracy).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.core.io import read_json
    from saeflow.probe.plots import plot_probe_accuracy

    plot_probe_accuracy(read_json(snakemake.input.summary), snakemake.output[0])


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
