"""Rule correct: naive and corrected loss per feature by one method (`saeflow correct`).

Input: ``study`` (correction/study.yaml). Params: ``method`` (wildcard), ``correction``
({n_boot, seed}). Output: ``result`` (correction/{method}.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.correction import correct_stage

    correct_stage(
        snakemake.input.study,
        snakemake.params.method,
        snakemake.params.correction,
        snakemake.output.result,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
