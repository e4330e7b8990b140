"""Rule patch_summary: the patching stage's headline numbers in summary.json.

Inputs: ``resid``, ``verify``, ``faithfulness``, ``circuit``; one file per estimator of
``patch.estimators``, named by it (``atp``, ``ig``, ``graddrop``, ``qkfix``); ``truth`` and
``exact`` (optional). Params: ``patch``. Output: ``summary``
(results/{experiment}/patch/summary.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.patch.stages import patch_summary_stage

    patch_summary_stage(
        snakemake.params.patch,
        dict(snakemake.input.items()),
        snakemake.output.summary,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
