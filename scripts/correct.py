"""Rule correct: naive and corrected loss per feature by one method (`saeflow correct`).

Input: ``study`` (correction/study.yaml). Params: ``method`` (wildcard), ``correction``
({n_boot, seed}). Output: ``result`` (correction/{method}.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.correction import correct
    from saeflow.core.io import write_json
    from saeflow.labels.study import load_study

    cfg = snakemake.params.correction
    result = correct(
        load_study(snakemake.input.study), snakemake.params.method, cfg["n_boot"], cfg["seed"]
    )
    write_json(snakemake.output.result, result, {**cfg, "method": snakemake.params.method})


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
