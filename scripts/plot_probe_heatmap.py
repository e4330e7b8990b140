"""Rule plot_probe_heatmap: figure probe_heatmap.png, layer x position grid of top features
(saeflow.probe.plots.plot_probe_heatmap).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.core.io import read_json
    from saeflow.probe.plots import plot_probe_heatmap

    plot_probe_heatmap([read_json(path) for path in snakemake.input.effects], snakemake.output[0])


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
