"""Rule plot_top_latents: figure top_latents.png, AtP and exact effects of the top latents, side by
side.
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.patch.plots import plot_top_latents_stage

    plot_top_latents_stage(snakemake.input.verify, snakemake.output.png)


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
