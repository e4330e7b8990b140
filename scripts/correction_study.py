"""Rule correction_study: the study file (counts, losses, validation labels) every method reads.

Inputs: ``ablation``, ``agreements``, ``classified``, ``humans`` (one per category, config
order). Params: ``categories`` (names). Output: ``study`` (correction/study.yaml; the same
file `saeflow correct` takes, so published numbers and the DAG share one path).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.study import correction_study_stage

    names = snakemake.params.categories
    correction_study_stage(
        snakemake.input.ablation,
        dict(zip(names, snakemake.input.agreements)),
        dict(zip(names, snakemake.input.classified)),
        dict(zip(names, snakemake.input.humans)),
        snakemake.output.study,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
