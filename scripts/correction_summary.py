"""Rule correction_summary (toy only): naive and corrected LPF against the true LPF.

Inputs: ``results`` (correction/{method}.json, in ``methods`` order), ``ablation`` (holds the
truth:<category> ablations). Params: ``methods``. Output: ``summary`` (correction/summary.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.correction import compare_with_truth, true_lpf
    from saeflow.core.io import read_json, write_json

    results = {m: read_json(p) for m, p in zip(snakemake.params.methods, snakemake.input.results)}
    write_json(
        snakemake.output.summary,
        compare_with_truth(results, true_lpf(read_json(snakemake.input.ablation))),
        {"methods": list(snakemake.params.methods)},
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
