"""Rule probe_fit: cross-validated probe of one dataset (saeflow.probe.fit_files.run_probe_fit)."""

from saeflow.core.runtime import rule_main


def body(sm):
    from saeflow.probe.fit_files import run_probe_fit

    run_probe_fit(sm.input.dataset, sm.output.json, sm.output.probe, cv=sm.params.cv,
                  config=sm.params.config, n_jobs=sm.threads)


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
