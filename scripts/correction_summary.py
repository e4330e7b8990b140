"""Rule correction_summary (toy only): naive and corrected LPF against the true LPF.

Inputs: ``results`` (correction/{method}.json, in ``methods`` order), ``ablation`` (holds the
truth:<category> ablations), ``study`` (correction/study.yaml, re-drawn for intervals given the
prompts). Params: ``methods``, ``correction`` (labels.correction). Output: ``summary`` (correction/summary.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.correction import correction_summary_stage

    correction_summary_stage(
        dict(zip(snakemake.params.methods, snakemake.input.results)),
        snakemake.input.ablation,
        snakemake.input.study,
        snakemake.params.correction,
        snakemake.output.summary,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
