# Latent dashboards (named target `dashboards`, not in `all`): the latents a study cares about
# (circuit nodes, top probe latents, a sample of each labelled category, a list in the config),
# each a static HTML page with its data as JSON beside it, an index per SAE and a front page.
# Built from the CSR codes on disk and the weights: no forward pass.
# Library: saeflow/latents/ (its __init__ lists them): selection (dashboard_latents),
# contexts + logits + pages (dashboard_pages), stage (dashboard_pages, dashboard_index).
# Config: config["dashboards"]. The stage's globals and get_* functions: common_dashboards.smk.


rule dashboard_latents:
    input:
        unpack(get_dashboard_sources),
    output:
        latents="results/{experiment}/dashboards/latents.json",
    log:
        "results/{experiment}/logs/dashboards/dashboard_latents/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    params:
        dashboards=DASHBOARDS,
        hooks=SAE_HOOKS,
        label_hook=DASHBOARD_LABEL_HOOK,
    script:
        "../../scripts/dashboard_latents.py"


rule dashboard_pages:
    input:
        unpack(get_model),
        unpack(get_dashboard_corpus),
        unpack(get_dashboard_labels),
        saes=get_dashboard_sae,
        latents=rules.dashboard_latents.output.latents,
    output:
        pages=report(
            directory("results/{experiment}/dashboards/{hook}"),
            htmlindex="index.html",
            category="Dashboards",
            caption="../report/dashboards.rst",
            labels={"sae": "{hook}"},
        ),
    log:
        "results/{experiment}/logs/dashboards/dashboard_pages/{hook}.log",
    benchmark:
        "results/{experiment}/benchmarks/dashboards/dashboard_pages/{hook}.tsv"
    conda:
        "../../envs/saeflow.yaml"
    params:
        model=config["model"],
        sae=config["sae"],
        hooks=get_dashboard_hooks,
        dashboards=DASHBOARDS,
        prompt_set=DASHBOARD_SET,
        label_hook=DASHBOARD_LABEL_HOOK,
    script:
        "../../scripts/dashboard_pages.py"


rule dashboard_index:
    input:
        unpack(get_dashboard_circuit),
        pages=expand(
            rules.dashboard_pages.output.pages, hook=SAE_HOOKS, allow_missing=True
        ),
    output:
        index="results/{experiment}/dashboards/index.html",
    log:
        "results/{experiment}/logs/dashboards/dashboard_index/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    params:
        dashboards=DASHBOARDS,
    script:
        "../../scripts/dashboard_index.py"
