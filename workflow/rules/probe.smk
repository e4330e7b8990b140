# Probing: can cheap representations predict SAE features or the concept, can SAE features at
# layers x positions predict the model's failures, and where does that signal live?
# Library: saeflow/probe/layerspec.py, probe_inputs.py, probe_strategies.py, probe_data.py,
# crossval.py, probing.py, probe_fit.py, effects.py, probe_summary.py, plots_probe.py.
# Config: config["probe"] (workflow/schemas/config.schema.yaml; the toy's in config/config.yaml):
#
#   probe:
#     prompt_sets: [heldout_seen, heldout_unseen]   # activations/{set}.h5 and codes/{set}.h5
#     hook_template: "blocks.{layer}.hook_resid_post"
#     cv: {n_folds: 5, inner_folds: 3, normalise: standardize, n_permutations: 5, seed: 0}
#         # also Cs, alphas, max_iter (saeflow.probe.fit.ProbeConfig)
#     effects: {n_permutations: 1000, alpha: 0.05, top_k: 20, seed: 0, batch_size: 256,
#               p_method: permutation}   # or normal: see saeflow.probe.effects.compute_effects
#     descriptions: null        # e.g. results/{experiment}/labels/descriptions.json
#     descriptions_hook: null   # the hook those descriptions belong to (default: file's source)
#     toy_check: {informative_positions: []}   # positions known (from ground truth) to matter
#     datasets:                 # saeflow.probe.strategies.STRATEGIES
#       - {name: emb_f, strategy: embedding-to-feature, target: {layer: 1, feature: auto}}
#       - {name: hid_f, strategy: hidden-to-feature, layers: "1", target: {feature: auto}}
#       - {name: hid_concept, strategy: hidden-to-concept, layers: "0-3", per_layer: true}
#       - {name: sae_concept, strategy: sae-to-concept, layers: "0-3", positions: [final],
#          positive_class: TypeError}       # one-vs-rest class for the effect sizes
#       - {name: sae_failure, strategy: sae-to-failure, layers: "0-3", positions: [final],
#          prompt_sets: [heldout_unseen]}   # overrides probe.prompt_sets for this dataset
#
# Positions: stored names, or per prompt (files extracted with positions: all) final, -k, or
# a name x recorded as meta/pos_x. A dataset may set `effects: true/false` (default: true for
# sae-* strategies). sae-to-failure reads meta/model_correct from the activation file.
# `per_layer: true` expands to one dataset per layer (name_L{layer}), which the
# accuracy-by-layer panel draws as a line.

from saeflow.probe.layerspec import expand_per_layer

PROBE = config.get("probe") or {}
PROBE_SETS = list(PROBE.get("prompt_sets", ["heldout_seen", "heldout_unseen"]))
PROBE_DATASETS = {d["name"]: d for d in expand_per_layer(PROBE.get("datasets", []))}
# (prompt_set, dataset) pairs to run: a dataset's own prompt_sets override probe.prompt_sets
PROBE_RUNS = [(ps, name) for name, d in PROBE_DATASETS.items()
              for ps in d.get("prompt_sets", PROBE_SETS)]
PROBE_EFFECTS = [(ps, name) for ps, name in PROBE_RUNS
                 if PROBE_DATASETS[name].get("effects",
                                             PROBE_DATASETS[name]["strategy"].startswith("sae-"))]
PROBE_NAMES = _alternatives(PROBE_DATASETS) or "(?!)"  # rule-level dataset constraint
PROBE_FITS = [f"results/{{experiment}}/probe/fits/{ps}/{name}.json" for ps, name in PROBE_RUNS]
PROBE_EFFECT_JSONS = [f"results/{{experiment}}/probe/effects/{ps}/{name}.json"
                      for ps, name in PROBE_EFFECTS]
PROBE_EFFECT_ARRAYS = [f"results/{{experiment}}/probe/effects/{ps}/{name}.h5"
                       for ps, name in PROBE_EFFECTS]

# checked only when the stage runs: a config that merges over config.yaml inherits its section
_PROBE_UNKNOWN_SETS = sorted({ps for ps, _ in PROBE_RUNS} - set(PROMPT_SETS))
if "probe" in config["stages"] and _PROBE_UNKNOWN_SETS:
    raise ValueError(f"config: probe: prompt sets {_PROBE_UNKNOWN_SETS} are not among "
                     f"extraction.prompt_sets {list(PROMPT_SETS)}")
if "probe" in config["stages"] and not PROBE_RUNS:
    raise ValueError("config: probe.datasets: 'probe' is in stages but no dataset is defined")


rule probe_data:
    input:
        # hidden-to-concept reads no SAE codes
        unpack(lambda wc: {
            "activations": f"results/{wc.experiment}/activations/{wc.prompt_set}.h5",
            **({} if PROBE_DATASETS[wc.dataset]["strategy"] == "hidden-to-concept" else
               {"codes": f"results/{wc.experiment}/codes/{wc.prompt_set}.h5"})}),
    output:
        "results/{experiment}/probe/data/{prompt_set}/{dataset}.h5",
    wildcard_constraints:
        dataset=PROBE_NAMES,
    params:
        dataset=lambda wildcards: PROBE_DATASETS[wildcards.dataset],
        # a function, so Snakemake does not take {layer} for a wildcard
        hook_template=lambda wildcards: PROBE.get("hook_template",
                                                  "blocks.{layer}.hook_resid_post"),
        n_folds=PROBE.get("cv", {}).get("n_folds", 5),
        config=PROBE,
    log:
        "results/{experiment}/logs/probe_data/{prompt_set}/{dataset}.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/probe_data.py"


rule probe_fit:
    input:
        dataset="results/{experiment}/probe/data/{prompt_set}/{dataset}.h5",
    output:
        json="results/{experiment}/probe/fits/{prompt_set}/{dataset}.json",
        probe="results/{experiment}/probe/fits/{prompt_set}/{dataset}.h5",
    wildcard_constraints:
        dataset=PROBE_NAMES,
    params:
        cv=PROBE.get("cv", {}),
        config=PROBE,
    threads: 2  # permutation-baseline runs in parallel
    log:
        "results/{experiment}/logs/probe_fit/{prompt_set}/{dataset}.log",
    benchmark:
        "results/{experiment}/benchmarks/probe_fit/{prompt_set}/{dataset}.tsv"
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/probe_fit.py"


rule probe_effects:
    input:
        descriptions=lambda wc: (PROBE.get("descriptions") or "").format(
            experiment=wc.experiment) or [],
        dataset="results/{experiment}/probe/data/{prompt_set}/{dataset}.h5",
        probe="results/{experiment}/probe/fits/{prompt_set}/{dataset}.h5",
    output:
        json="results/{experiment}/probe/effects/{prompt_set}/{dataset}.json",
        arrays="results/{experiment}/probe/effects/{prompt_set}/{dataset}.h5",
    wildcard_constraints:
        dataset=PROBE_NAMES,
    params:
        settings=PROBE.get("effects", {}),
        positive_class=lambda wildcards: PROBE_DATASETS[wildcards.dataset].get("positive_class"),
        descriptions_hook=PROBE.get("descriptions_hook"),
        informative_positions=[str(p) for p in
                               PROBE.get("toy_check", {}).get("informative_positions", [])],
        config=PROBE,
    log:
        "results/{experiment}/logs/probe_effects/{prompt_set}/{dataset}.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/probe_effects.py"


rule probe_summary:
    input:
        fits=PROBE_FITS,
        effects=PROBE_EFFECT_JSONS,
    output:
        "results/{experiment}/probe/summary.json",
    params:
        config=PROBE,
    log:
        "results/{experiment}/logs/probe_summary.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/probe_summary.py"


rule plot_probe_accuracy:
    input:
        summary="results/{experiment}/probe/summary.json",
    output:
        png=report("results/{experiment}/figures/probe_accuracy.png", category="Probing",
                   caption="../report/probe_accuracy.rst",
                   labels={"figure": "probe accuracy by layer and input"}),
    log:
        "results/{experiment}/logs/plot_probe_accuracy.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_probe_accuracy.py"


rule plot_probe_heatmap:
    input:
        effects=PROBE_EFFECT_JSONS,
    output:
        png=report("results/{experiment}/figures/probe_heatmap.png", category="Probing",
                   caption="../report/probe_heatmap.rst",
                   labels={"figure": "top features: layer x position"}),
    log:
        "results/{experiment}/logs/plot_probe_heatmap.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_probe_heatmap.py"


rule plot_cohens_d:
    input:
        arrays=PROBE_EFFECT_ARRAYS,
    output:
        png=report("results/{experiment}/figures/cohens_d.png", category="Probing",
                   caption="../report/cohens_d.rst",
                   labels={"figure": "Cohen's d distribution"}),
    log:
        "results/{experiment}/logs/plot_cohens_d.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_cohens_d.py"


rule fig_probe_accuracy:
    input:
        f"results/{EXP}/figures/probe_accuracy.png",


rule fig_probe_heatmap:
    input:
        f"results/{EXP}/figures/probe_heatmap.png",


rule fig_cohens_d:
    input:
        f"results/{EXP}/figures/cohens_d.png",
