"""Rule plot_sae_density: each SAE's latents by log10 firing frequency (figures/sae_density.png).

Input: ``density`` (sae/density.json). Output: ``png``.
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.sae_density import plot_sae_density_stage

    plot_sae_density_stage(snakemake.input.density, snakemake.output.png)


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
