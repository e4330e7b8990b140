"""Rule plot_probe_heatmap: layer x position grid of top features
(saeflow.plots_probe.plot_probe_heatmap)."""

from saeflow.runtime import rule_main


def body(sm):
    from saeflow.io import read_json
    from saeflow.plots_probe import plot_probe_heatmap

    plot_probe_heatmap([read_json(path) for path in sm.input.effects], sm.output[0])


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
