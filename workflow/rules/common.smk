# Config validation and the few input functions every stage shares. Imports nothing heavy:
# the Snakefile is parsed on every invocation.
import re

from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

EXP = config["experiment"]
TOY = config["model"]["source"] == "toy"
TOY_PROMPT_SETS = ["train", "heldout_seen", "heldout_unseen", "pairs"]
SAE_HOOKS = config["sae"]["hooks"]


def _prompt_sets():
    sets = config["extraction"]["prompt_sets"]
    if isinstance(sets, list):
        if not TOY:
            raise ValueError("config: extraction.prompt_sets: give name -> JSONL path for a non-toy model")
        unknown = sorted(set(sets) - set(TOY_PROMPT_SETS))
        if unknown:
            raise ValueError(f"config: extraction.prompt_sets: unknown toy prompt sets {unknown}")
        return {name: f"results/{EXP}/world/prompts/{name}.jsonl" for name in sets}
    return dict(sets)


PROMPT_SETS = _prompt_sets()


def _alternatives(names):
    return "|".join(re.escape(n) for n in names)


wildcard_constraints:
    experiment=re.escape(EXP),
    prompt_set=_alternatives(PROMPT_SETS),
    hook=_alternatives(SAE_HOOKS),


def prompt_set_file(wildcards):
    return PROMPT_SETS[wildcards.prompt_set]


def model_input(wildcards):
    """The trained toy model directory; pretrained models come from the hub at run time."""
    return {"model": f"results/{EXP}/model"} if TOY else {}


def sae_dirs(wildcards):
    """SAE directories in ``SAE_HOOKS`` order: trained (source: train) or given (local);
    none for pretrained SAEs, which come from the hub at run time."""
    if config["sae"]["source"] == "train":
        return [f"results/{EXP}/sae/{h}" for h in SAE_HOOKS]
    if config["sae"]["source"] == "local":
        return [config["sae"]["paths"][h] for h in SAE_HOOKS]
    return []


def sae_dir(hook):
    """Input dict for one hook's SAE directory (empty for pretrained SAEs)."""
    dirs = dict(zip(SAE_HOOKS, sae_dirs(None)))
    return {"sae": dirs[hook]} if hook in dirs else {}


def all_targets():
    targets = expand("results/{experiment}/codes/{prompt_set}.h5", experiment=EXP,
                     prompt_set=PROMPT_SETS)
    targets.append(f"results/{EXP}/sae/metrics.json")
    if TOY:
        targets.append(f"results/{EXP}/model")
    stages = config["stages"]
    if "labels" in stages:
        methods = config["labels"]["correction"]["methods"]
        targets += expand("results/{experiment}/correction/{method}.json", experiment=EXP, method=methods)
        targets += expand("results/{experiment}/figures/lpf_{method}.png", experiment=EXP, method=methods)
        targets.append(f"results/{EXP}/figures/labels_confusion.png")
        if config["labels"]["labeller"] == "oracle":
            targets.append(f"results/{EXP}/correction/summary.json")
    if "patch" in stages:
        targets.append(f"results/{EXP}/patch/summary.json")
        targets += expand("results/{experiment}/figures/{name}.png", experiment=EXP,
                          name=["resid_patching", "top_latents", "faithfulness", "latent_activations"])
    if "probe" in stages:
        targets.append(f"results/{EXP}/probe/summary.json")
        targets += expand("results/{experiment}/figures/{name}.png", experiment=EXP,
                          name=["probe_accuracy", "probe_heatmap", "cohens_d"])
    return targets


# Labels stage (workflow/rules/labels.smk): its config section and input functions.
LABELS = config.get("labels") or {"categories": {}, "correction": {"methods": []}}
LABEL_CATS = list(LABELS["categories"])
LPF_METHODS = LABELS["correction"]["methods"]
IS_ORACLE = LABELS.get("labeller", "human") == "oracle"


def labels_describe_inputs(wildcards):
    if LABELS["describe"].get("backend", "activations") == "neuronpedia":
        return {"folder": LABELS["describe"]["folder"]}
    ps = LABELS["prompt_set"]
    return {"codes": f"results/{wildcards.experiment}/codes/{ps}.h5",
            "activations": f"results/{wildcards.experiment}/activations/{ps}.h5",
            **model_input(wildcards)}


def labels_human_path(experiment, category):
    if IS_ORACLE:
        return f"results/{experiment}/labels/oracle/{category}.json"
    return LABELS["human"][category]


def labels_human(wildcards):
    return labels_human_path(wildcards.experiment, wildcards.category)


def labels_humans(wildcards):
    return [labels_human_path(wildcards.experiment, c) for c in LABEL_CATS]


def labels_toy_inputs(wildcards):
    if not IS_ORACLE:
        return {}
    return {"truth": f"results/{wildcards.experiment}/world/truth.json",
            "membership": f"results/{wildcards.experiment}/labels/truth_membership.json"}
