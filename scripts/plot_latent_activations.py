"""Rule plot_latent_activations: figure latent_activations.png, activations of the top latents over
positions.
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.patch.plots import plot_latent_activations_stage

    plot_latent_activations_stage(snakemake.input.top_latents, snakemake.output.png)


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
