"""Rule plot_probe_accuracy: probe accuracy by layer and input kind
(saeflow.plots_probe.plot_probe_accuracy)."""

from saeflow.runtime import rule_main


def body(sm):
    from saeflow.io import read_json
    from saeflow.plots_probe import plot_probe_accuracy

    plot_probe_accuracy(read_json(sm.input.summary), sm.output[0])


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
