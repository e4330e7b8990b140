# Globals and input functions (get_*) of the rules in probe.smk, included just before it.

from saeflow.core.layerspec import expand_per_layer

# The schema gives every config a probe section.
PROBE = config["probe"]
PROBE_DATASETS = {d["name"]: d for d in expand_per_layer(PROBE["datasets"])}
# (prompt_set, dataset) pairs to run: a dataset's own prompt_sets override probe.prompt_sets
PROBE_RUNS = [
    (ps, name)
    for name, d in PROBE_DATASETS.items()
    for ps in d.get("prompt_sets", PROBE["prompt_sets"])
]
# effect sizes: a dataset's `effects`, else on for the sae-* strategies
PROBE_EFFECTS = [
    (ps, name)
    for ps, name in PROBE_RUNS
    if PROBE_DATASETS[name].get(
        "effects", PROBE_DATASETS[name]["strategy"].startswith("sae-")
    )
]
PROBE_NAMES = _alternatives(PROBE_DATASETS) or "(?!)"  # rule-level dataset constraint
# saeflow.core.config.check_config has checked the datasets: names differ, and when the stage
# runs, their prompt sets are extracted and their layers are stored hooks.


def probe_files(path, runs):
    """``path`` (a probe rule's output) for each (prompt_set, dataset) of ``runs``."""
    return [
        expand(path, prompt_set=ps, dataset=name, allow_missing=True)[0]
        for ps, name in runs
    ]


def get_probe_data_input(wildcards):
    """Activations, and SAE codes unless the strategy reads none (hidden-to-concept)."""
    files = {"activations": rules.extract.output.acts}
    if PROBE_DATASETS[wildcards.dataset]["strategy"] != "hidden-to-concept":
        files["codes"] = rules.encode.output.codes
    return files


def get_probe_dataset(wildcards):
    return PROBE_DATASETS[wildcards.dataset]


def _probe_keys():
    """Dataset name -> its entry's config key (probe.datasets[i]), named in its errors."""
    return {
        item["name"]: f"probe.datasets[{i}]"
        for i, entry in enumerate(PROBE["datasets"])
        for item in expand_per_layer([entry])
    }


PROBE_KEYS = _probe_keys()


def get_probe_build_options(wildcards):
    """saeflow.probe.strategies.BuildOptions of a dataset on a prompt set (a function, so
    Snakemake does not take hook_template's {layer} for a wildcard)."""
    prompts = prompt_file(wildcards.prompt_set)
    return {
        "hook_template": PROBE["hook_template"],
        "n_folds": PROBE["cv"]["n_folds"],
        "key": PROBE_KEYS[wildcards.dataset],
        "prompts": expand(prompts, experiment=wildcards.experiment)[0],
    }


def get_probe_descriptions(wildcards):
    return (PROBE["descriptions"] or "").format(experiment=wildcards.experiment) or []


def get_positive_class(wildcards):
    return PROBE_DATASETS[wildcards.dataset].get("positive_class")


def get_probe_fits(wildcards):
    return probe_files(rules.probe_fit.output.json, PROBE_RUNS)


def get_probe_effects(wildcards):
    return probe_files(rules.probe_effects.output.json, PROBE_EFFECTS)


# toy: prompt set -> datasets checked against the model's own readout (probe_summary)
PROBE_READOUT = {
    ps: [n for n in PROBE["toy_check"]["readout_datasets"] if (ps, n) in PROBE_RUNS]
    for ps in dict.fromkeys(ps for ps, _ in PROBE_RUNS)
}
PROBE_READOUT = {ps: names for ps, names in PROBE_READOUT.items() if names}


def get_probe_readout_activations(wildcards):
    """Activations of each prompt set with a readout check, keyed by prompt set."""
    return {
        ps: expand(rules.extract.output.acts, experiment=EXP, prompt_set=ps)[0]
        for ps in PROBE_READOUT
    }


def get_probe_readout_data(wildcards):
    """The dataset files of the readout check (the model's accuracy on their prompts)."""
    runs = [(ps, name) for ps, names in PROBE_READOUT.items() for name in names]
    return probe_files(rules.probe_data.output.dataset, runs)


def get_probe_effect_arrays(wildcards):
    return probe_files(rules.probe_effects.output.arrays, PROBE_EFFECTS)
