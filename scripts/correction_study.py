"""Rule correction_study: the study file (counts, losses, validation labels) every method reads.

Inputs: ``ablation``, ``agreements``, ``classified``, ``humans`` (one per category, config
order). Params: ``categories`` (names). Output: ``study`` (correction/study.yaml; the same
file `saeflow correct` takes, so published numbers and the DAG share one path).
"""

from saeflow.core.runtime import rule_main


def body(smk) -> None:
    from saeflow.labels.study import study_stage

    names = smk.params.categories
    study_stage(smk.input.ablation, dict(zip(names, smk.input.agreements)),
                dict(zip(names, smk.input.classified)), dict(zip(names, smk.input.humans)),
                smk.output.study)


rule_main(body, snakemake)  # noqa: F821
