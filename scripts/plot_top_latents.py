"""Rule plot_top_latents. Figure: AtP and exact effects of the top latents, side by side."""

from saeflow.core.runtime import rule_main


def body(smk) -> None:
    from saeflow.patch.plots import plot_top_latents

    plot_top_latents(smk.input.verify, smk.output.png)


rule_main(body, snakemake)  # noqa: F821
