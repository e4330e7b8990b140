"""Rule patch_summary: the patching stage's headline numbers in summary.json.

Inputs: ``resid``, ``atp``, ``verify``, ``faithfulness``, ``circuit``; ``truth``, ``exact``
``ig`` and ``graddrop`` (optional). Params: ``patch``. Output: ``summary``
(results/{experiment}/patch/summary.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.patch.stages import patch_summary_stage

    patch_summary_stage(
        snakemake.params.patch,
        snakemake.input.resid,
        snakemake.input.atp,
        snakemake.input.verify,
        snakemake.input.faithfulness,
        snakemake.input.truth,
        snakemake.output.summary,
        exact=snakemake.input.exact,
        ig=snakemake.input.ig,
        circuit=snakemake.input.circuit,
        graddrop=snakemake.input.graddrop,
        qkfix=snakemake.input.qkfix,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
