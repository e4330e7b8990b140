"""Rule probe_fit: cross-validated probe of one dataset (saeflow.probe.fit_files.probe_fit_stage).

Inputs: ``dataset``, ``activations`` (its meta/<probe.cv.group_by> column). Params: ``cv``,
``config``. Outputs: ``json``, ``probe``.
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.probe.fit_files import probe_fit_stage

    probe_fit_stage(
        snakemake.input.dataset,
        snakemake.output.json,
        snakemake.output.probe,
        cv=snakemake.params.cv,
        config=snakemake.params.config,
        n_jobs=snakemake.threads,
        activations=snakemake.input.activations,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
