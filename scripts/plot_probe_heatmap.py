"""Rule plot_probe_heatmap: figure probe_heatmap.png, layer x position grid of top features
(saeflow.probe.plots.plot_probe_heatmap_stage).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.probe.plots import plot_probe_heatmap_stage

    plot_probe_heatmap_stage(list(snakemake.input.effects), snakemake.output[0])


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
