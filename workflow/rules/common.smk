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


def all_targets():
    targets = expand("results/{experiment}/codes/{prompt_set}.h5", experiment=EXP,
                     prompt_set=PROMPT_SETS)
    targets.append(f"results/{EXP}/sae/metrics.json")
    if TOY:
        targets.append(f"results/{EXP}/model")
    return targets
