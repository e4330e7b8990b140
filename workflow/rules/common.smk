# Globals and the input functions (get_*) of every stage. Imports nothing heavy: the
# Snakefile is parsed on every invocation. workflow/Snakefile has validated `config` against
# workflow/schemas/config.schema.yaml (the one home of every default) before this file runs.
# Input functions run when the DAG is built, after every .smk file is read, so they may name
# any rule's outputs (rules.<rule>.output.<name>).
import os
import re

from saeflow.core.layerspec import expand_per_layer

EXP = config["experiment"]
TOY = config["model"]["source"] == "toy"
TOY_PROMPT_SETS = ["train", "heldout_seen", "heldout_unseen", "pairs"]
SAE_HOOKS = config["sae"]["hooks"]


def _prompt_sets():
    """Prompt-set name -> JSONL path; None for the toy world's own (outputs of toy_world)."""
    sets = config["extraction"]["prompt_sets"]
    if isinstance(sets, list):
        if not TOY:
            raise ValueError(
                "config: extraction.prompt_sets: give name -> JSONL path for a non-toy model"
            )
        unknown = sorted(set(sets) - set(TOY_PROMPT_SETS))
        if unknown:
            raise ValueError(
                f"config: extraction.prompt_sets: unknown toy prompt sets {unknown}"
            )
        return {name: None for name in sets}
    return dict(sets)


PROMPT_SETS = _prompt_sets()


def _shard_counts():
    """Prompt set -> number of shards, for the sets longer than extraction.shard_size (only
    files the config names: their length is known before any job runs)."""
    from saeflow.core.prompts import count_records

    size = config["extraction"]["shard_size"]
    if not size:
        return {}
    counts = {}
    for name, path in PROMPT_SETS.items():
        n = count_records(path) if path and os.path.isfile(path) else 0
        if n > size:
            counts[name] = -(-n // size)
    return counts


SHARDS = _shard_counts()


def _alternatives(names):
    """A regex matching exactly ``names``; none: a regex that matches nothing."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


SHARDED = _alternatives(SHARDS)
UNSHARDED = _alternatives(set(PROMPT_SETS) - set(SHARDS))


wildcard_constraints:
    experiment=re.escape(EXP),
    prompt_set=_alternatives(PROMPT_SETS),
    hook=_alternatives(SAE_HOOKS),
    shard=r"\d{5}",


def toy_prompts(*names):
    """The toy world's prompt files ``names`` (outputs of toy_world; {experiment} open)."""
    files = dict(zip(TOY_PROMPT_SETS, rules.toy_world.output.prompts))
    return [files[name] for name in names]


def prompt_file(name):
    """Prompt set ``name``'s JSONL file: the config's path or the toy world's file."""
    return PROMPT_SETS[name] or toy_prompts(name)[0]


def get_prompts(wildcards):
    return prompt_file(wildcards.prompt_set)


def get_first_prompts(wildcards):
    """The first prompt set, the one the SAEs are evaluated on."""
    return prompt_file(next(iter(PROMPT_SETS)))


def get_activation_shards(wildcards):
    """A sharded prompt set's activation shards, in order."""
    return expand(
        rules.extract_shard.output.acts,
        experiment=wildcards.experiment,
        prompt_set=wildcards.prompt_set,
        shard=[f"{i:05d}" for i in range(SHARDS[wildcards.prompt_set])],
    )


def get_code_shards(wildcards):
    """A sharded prompt set's code shards, in order."""
    return expand(
        rules.encode_shard.output.codes,
        experiment=wildcards.experiment,
        prompt_set=wildcards.prompt_set,
        shard=[f"{i:05d}" for i in range(SHARDS[wildcards.prompt_set])],
    )


def get_model(wildcards):
    """The trained toy model directory; pretrained models come from the hub at run time."""
    return {"model": rules.train_model.output.model} if TOY else {}


def sae_dirs():
    """SAE directories in ``SAE_HOOKS`` order ({experiment} open): trained (source: train)
    or given (local); none for pretrained SAEs, which come from the hub at run time."""
    if config["sae"]["source"] == "train":
        return expand(rules.train_sae.output.sae, hook=SAE_HOOKS, allow_missing=True)
    if config["sae"]["source"] == "local":
        return [config["sae"]["paths"][h] for h in SAE_HOOKS]
    return []


def get_sae_dirs(wildcards):
    return sae_dirs()


def get_final_output():
    """The targets of `all`: every prompt set's codes, SAE metrics, the model, and each
    stage in config["stages"] with its figures."""
    targets = expand(rules.encode.output.codes, experiment=EXP, prompt_set=PROMPT_SETS)
    targets += expand(rules.evaluate_saes.output.metrics, experiment=EXP)
    if TOY:
        targets += expand(rules.train_model.output.model, experiment=EXP)
    stages = config["stages"]
    if "labels" in stages:
        targets += expand(
            rules.correct.output.result, experiment=EXP, method=LPF_METHODS
        )
        targets += expand(rules.plot_lpf.output.png, experiment=EXP, method=LPF_METHODS)
        targets += expand(rules.plot_confusion.output.png, experiment=EXP)
        if IS_ORACLE:
            targets += expand(rules.correction_summary.output.summary, experiment=EXP)
    if "patch" in stages:
        targets += expand(rules.patch_summary.output.summary, experiment=EXP)
        for plot in (
            rules.plot_resid_patching,
            rules.plot_top_latents,
            rules.plot_faithfulness,
            rules.plot_latent_activations,
            rules.plot_circuit,
        ):
            targets += expand(plot.output.png, experiment=EXP)
    if "probe" in stages:
        targets += expand(rules.probe_summary.output.summary, experiment=EXP)
        for plot in (
            rules.plot_probe_accuracy,
            rules.plot_probe_heatmap,
            rules.plot_cohens_d,
        ):
            targets += expand(plot.output.png, experiment=EXP)
    return targets


# Labels stage (workflow/rules/labels.smk, included when the config has a labels section;
# `all` runs the stages config["stages"] lists, each checked to have its section).
LABELS = config.get("labels", {})
LABEL_CATS = list(LABELS.get("categories", {}))
LPF_METHODS = LABELS.get("correction", {}).get("methods", [])
IS_ORACLE = LABELS.get("labeller") == "oracle"


def labels_codes():
    """The described prompt set's codes file ({experiment} open)."""
    return expand(
        rules.encode.output.codes, prompt_set=LABELS["prompt_set"], allow_missing=True
    )[0]


def labels_activations():
    """The described prompt set's activations file ({experiment} open)."""
    return expand(
        rules.extract.output.acts, prompt_set=LABELS["prompt_set"], allow_missing=True
    )[0]


def get_describe_input(wildcards):
    """Toy: codes, activations and the model; Neuronpedia: your export folder, else the
    manifest of the batches rule fetch_neuronpedia downloaded."""
    if LABELS["describe"]["backend"] == "neuronpedia":
        if LABELS["describe"].get("folder"):
            return {"folder": LABELS["describe"]["folder"]}
        return {"manifest": rules.fetch_neuronpedia.output.manifest}
    return {
        "codes": labels_codes(),
        "activations": labels_activations(),
        **get_model(wildcards),
    }


def neuronpedia_model_id():
    """Neuronpedia's model id: labels.describe.model_id, else the model's name."""
    return LABELS["describe"].get("model_id") or config["model"]["name"]


def get_labels_codes(wildcards):
    return labels_codes()


def get_labels_activations(wildcards):
    return labels_activations()


def human_labels(category):
    """The human labels of ``category`` as the DAG reads them: the oracle's in the toy world,
    else the checked copy of your file (rule import_human_labels)."""
    step = rules.label_oracle if IS_ORACLE else rules.import_human_labels
    return expand(step.output.labels, category=category, allow_missing=True)[0]


def get_human_labels_path(wildcards):
    """Your labels file for the category (labels.human), None when the config names none."""
    return LABELS["human"].get(wildcards.category)


def get_human_labels_file(wildcards):
    """Your labels file as an input once it exists: until then import_human_labels runs
    without it and stops with the `saeflow label` command that writes it."""
    path = get_human_labels_path(wildcards)
    return {"human": path} if path and os.path.isfile(path) else {}


def get_question(wildcards):
    return LABELS["categories"][wildcards.category]["question"]


def get_human_labels(wildcards):
    return human_labels(wildcards.category)


def get_all_human_labels(wildcards):
    return [human_labels(c) for c in LABEL_CATS]


def get_classified(wildcards):
    return expand(
        rules.classify.output.classified, category=LABEL_CATS, allow_missing=True
    )


def get_agreements(wildcards):
    return expand(rules.agree.output.json, category=LABEL_CATS, allow_missing=True)


def get_toy_membership(wildcards):
    """Toy world only: the true category members, whose ablation is reported too."""
    if not IS_ORACLE:
        return {}
    return {"membership": rules.truth_membership.output.membership}


def get_labels_sae(wildcards):
    """The labelled hook's SAE directory (none for pretrained SAEs)."""
    dirs = dict(zip(SAE_HOOKS, sae_dirs()))
    return {"sae": dirs[LABELS["hook"]]} if LABELS["hook"] in dirs else {}


def get_lpf_truth(wildcards):
    """Toy world only: the ablation file holding the true LPF the figure marks."""
    return {"ablation": rules.ablate_categories.output.ablation} if IS_ORACLE else {}


# Patching stage (workflow/rules/patch.smk, included when the config has a patch section).
PATCH = config.get("patch", {})


def get_patch_pairs(wildcards):
    return PATCH["pairs"]


def get_patch_descriptions(wildcards):
    return PATCH["descriptions"] or []


def get_patch_truth(wildcards):
    return PATCH["truth"] or []


def get_patch_exact(wildcards):
    """The exhaustive exact-patching reference, when patch.exhaustive asks for it."""
    return rules.patch_exact.output.exact if PATCH["exhaustive"] else []


def get_patch_ig(wildcards):
    """Integrated gradients, when patch.estimators lists it (atp always runs)."""
    return rules.patch_ig.output.ig if "ig" in PATCH["estimators"] else []


def get_patch_qkfix(wildcards):
    """AtP* with the QK fix, when patch.estimators lists it."""
    return rules.patch_qkfix.output.qkfix if "qkfix" in PATCH["estimators"] else []


def get_patch_graddrop(wildcards):
    """AtP* GradDrop, when patch.estimators lists it."""
    return (
        rules.patch_graddrop.output.graddrop
        if "graddrop" in PATCH["estimators"]
        else []
    )


# Probing stage (workflow/rules/probe.smk; the schema gives every config a probe section).
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

# checked only when the stage runs: a config that merges over config.yaml inherits its section
_PROBE_UNKNOWN_SETS = sorted({ps for ps, _ in PROBE_RUNS} - set(PROMPT_SETS))
if "probe" in config["stages"] and _PROBE_UNKNOWN_SETS:
    raise ValueError(
        f"config: probe: prompt sets {_PROBE_UNKNOWN_SETS} are not among "
        f"extraction.prompt_sets {list(PROMPT_SETS)}"
    )
if "probe" in config["stages"] and not PROBE_RUNS:
    raise ValueError(
        "config: probe.datasets: 'probe' is in stages but no dataset is defined"
    )


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


def get_hook_template(wildcards):
    # a function, so Snakemake does not take {layer} for a wildcard
    return PROBE["hook_template"]


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


def get_probe_effect_arrays(wildcards):
    return probe_files(rules.probe_effects.output.arrays, PROBE_EFFECTS)
