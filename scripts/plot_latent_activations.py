"""Rule plot_latent_activations. Figure: activations of the top latents over positions."""

from saeflow.core.runtime import rule_main


def body(smk) -> None:
    from saeflow.patch.plots import plot_latent_activations

    plot_latent_activations(smk.input.top_latents, smk.output.png)


rule_main(body, snakemake)  # noqa: F821
