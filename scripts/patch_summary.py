"""Rule patch_summary: the patching stage's headline numbers in summary.json."""

from saeflow.core.runtime import rule_main


def body(smk) -> None:
    from saeflow.patch.summary import summary_stage
    from saeflow.patch.resid import PatchConfig, optional_input

    summary_stage(smk.input.resid, smk.input.atp, smk.input.verify, smk.input.faithfulness,
                  optional_input(smk.input.truth),
                  PatchConfig.from_dict(smk.params.patch), smk.output.summary,
                  {"patch": smk.params.patch})


rule_main(body, snakemake)  # noqa: F821
