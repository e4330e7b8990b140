# Probing: can cheap representations predict SAE features or the concept, can SAE features at
# layers x positions predict the model's failures, and where does that signal live?
# Library: saeflow/probe/ (its __init__ lists them): inputs, strategies (probe_data), dataset,
# crossval, fold, fit, fit_files (probe_fit), permutation, effects, effects_files
# (probe_effects), summary (probe_summary), plots (plot_*); per_layer expansion:
# saeflow/core/layerspec. Config: config["probe"] (keys and defaults:
# workflow/schemas/config.schema.yaml, described in config/README.md; the toy's datasets in
# config/config.yaml). The stage's globals and get_* functions: common_probe.smk.
#
# Positions: stored names, or per prompt (files extracted with positions: all) final, -k, or
# a name x recorded as meta/pos_x. sae-to-failure reads meta/model_correct from the activation
# file. `per_layer: true` expands to one dataset per layer (name_L{layer}), which the
# accuracy-by-layer panel draws as a line.


rule probe_data:
    input:
        unpack(get_probe_data_input),
    output:
        dataset="results/{experiment}/probe/data/{prompt_set}/{dataset}.h5",
    log:
        "results/{experiment}/logs/probe/probe_data/{prompt_set}/{dataset}.log",
    wildcard_constraints:
        dataset=PROBE_NAMES,
    conda:
        "../../envs/saeflow.yaml"
    params:
        dataset=get_probe_dataset,
        # hook_template, n_folds, and the config key and prompt file its errors name
        options=get_probe_build_options,
        config=PROBE,
    script:
        "../../scripts/probe_data.py"


rule probe_fit:
    input:
        dataset=rules.probe_data.output.dataset,
        # meta/<probe.cv.group_by>: the groups folds keep whole
        activations=rules.extract.output.acts,
    output:
        json="results/{experiment}/probe/fits/{prompt_set}/{dataset}.json",
        probe="results/{experiment}/probe/fits/{prompt_set}/{dataset}.h5",
    log:
        "results/{experiment}/logs/probe/probe_fit/{prompt_set}/{dataset}.log",
    benchmark:
        "results/{experiment}/benchmarks/probe/probe_fit/{prompt_set}/{dataset}.tsv"
    wildcard_constraints:
        dataset=PROBE_NAMES,
    conda:
        "../../envs/saeflow.yaml"
    # the datasets side by side; permutation runs use the threads a profile gives (--set-threads),
    # and the fit does not depend on how many (the shuffles are drawn up front)
    threads: 1
    params:
        cv=PROBE["cv"],
        config=PROBE,
    script:
        "../../scripts/probe_fit.py"


rule probe_effects:
    input:
        descriptions=get_probe_descriptions,
        dataset=rules.probe_data.output.dataset,
        probe=rules.probe_fit.output.probe,
    output:
        json="results/{experiment}/probe/effects/{prompt_set}/{dataset}.json",
        arrays="results/{experiment}/probe/effects/{prompt_set}/{dataset}.h5",
    log:
        "results/{experiment}/logs/probe/probe_effects/{prompt_set}/{dataset}.log",
    wildcard_constraints:
        dataset=PROBE_NAMES,
    conda:
        "../../envs/saeflow.yaml"
    params:
        positive_class=get_positive_class,
        # its effects, descriptions_hook and toy_check.informative_positions, and provenance
        config=PROBE,
    script:
        "../../scripts/probe_effects.py"


rule probe_summary:
    input:
        unpack(get_probe_readout_activations),
        fits=get_probe_fits,
        effects=get_probe_effects,
        readout_data=get_probe_readout_data,
    output:
        summary="results/{experiment}/probe/summary.json",
    log:
        "results/{experiment}/logs/probe/probe_summary/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    params:
        config=PROBE,
        readout=PROBE_READOUT,
    script:
        "../../scripts/probe_summary.py"


rule plot_probe_accuracy:
    input:
        summary=rules.probe_summary.output.summary,
    output:
        png=report(
            "results/{experiment}/figures/probe_accuracy.png",
            category="Probing",
            caption="../report/probe_accuracy.rst",
            labels={"figure": "probe_accuracy"},
        ),
    log:
        "results/{experiment}/logs/probe/plot_probe_accuracy/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_probe_accuracy.py"


rule plot_probe_heatmap:
    input:
        effects=get_probe_effects,
    output:
        png=report(
            "results/{experiment}/figures/probe_heatmap.png",
            category="Probing",
            caption="../report/probe_heatmap.rst",
            labels={"figure": "probe_heatmap"},
        ),
    log:
        "results/{experiment}/logs/probe/plot_probe_heatmap/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_probe_heatmap.py"


rule plot_cohens_d:
    input:
        arrays=get_probe_effect_arrays,
    output:
        png=report(
            "results/{experiment}/figures/cohens_d.png",
            category="Probing",
            caption="../report/cohens_d.rst",
            labels={"figure": "cohens_d"},
        ),
    log:
        "results/{experiment}/logs/probe/plot_cohens_d/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_cohens_d.py"
