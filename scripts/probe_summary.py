"""Rule probe_summary: gather probe fits and effects into summary.json
(saeflow.probe.summary.probe_summary_stage).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.probe.summary import probe_summary_stage

    probe_summary_stage(
        list(snakemake.input.fits),
        list(snakemake.input.effects),
        snakemake.output[0],
        config=snakemake.params.config,
        readout=snakemake.params.readout,
        activations=dict(snakemake.input.items()),
        readout_data=list(getattr(snakemake.input, "readout_data", [])),
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
