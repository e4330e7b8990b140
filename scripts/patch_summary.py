"""Rule patch_summary: the patching stage's headline numbers in summary.json."""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.patch.summary import summary_stage
    from saeflow.patch.resid import PatchConfig, optional_input

    summary_stage(
        snakemake.input.resid,
        snakemake.input.atp,
        snakemake.input.verify,
        snakemake.input.faithfulness,
        optional_input(snakemake.input.truth),
        PatchConfig.from_dict(snakemake.params.patch),
        snakemake.output.summary,
        {"patch": snakemake.params.patch},
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
