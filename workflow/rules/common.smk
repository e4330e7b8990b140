# Globals and input functions (get_*) the stages share: prompt sets and shards, the model and
# SAE inputs, the targets of `all`. A stage's own globals and get_* functions are in
# common_<stage>.smk, included just before <stage>.smk (snakemake --lint keeps functions and
# rules in separate files). Imports nothing heavy: the Snakefile is parsed on every invocation. workflow/Snakefile has validated `config` against
# workflow/schemas/config.schema.yaml (the one home of every default) before this file runs.
# Input functions run when the DAG is built, after every .smk file is read, so they may name
# any rule's outputs (rules.<rule>.output.<name>).
import os
import re

from saeflow.core.config import mark_stale_gathers, shard_counts
from saeflow.core.user_files import (
    absent_inputs,
    checkpoint_inputs,
    stop_if_absent,
    warn_absent,
)
from saeflow.core.config_checks import TOY_PROMPT_SETS

EXP = config["experiment"]
# The user's own inputs not in place yet (checkpoint, corpus, prompt files): a dry run plans
# without them, saying so; a run stops with the first one's line before any job starts.
ABSENT = absent_inputs(config, CONFIG_SOURCE)
warn_absent(ABSENT)


onstart:
    stop_if_absent(ABSENT)


TOY = config["model"]["source"] == "toy"
SAE_HOOKS = config["sae"]["hooks"]
# A local checkpoint's files (model.source: local): inputs of every rule that loads the model,
# so a changed file reruns them; their sha256 join config["model"], which provenance records.
MODEL_FILES = checkpoint_inputs(config["model"], CONFIG_SOURCE)
# Rule train_sae's log: the toy's SAE logs stay with the toy stage's, where they always were.
SAE_LOG_STAGE = "toy" if TOY else "sae"
TRAIN_SAE_LOG = "results/{experiment}/logs/%s/train_sae/{hook}.log" % SAE_LOG_STAGE
# Prompt-set name -> JSONL path; None for the toy world's own (outputs of toy_world).
# saeflow.core.config.check_config has checked the names (a list is the toy's own sets).
_SETS = config["extraction"]["prompt_sets"]
PROMPT_SETS = {name: None for name in _SETS} if isinstance(_SETS, list) else dict(_SETS)
# Prompt set -> number of shards, for the sets longer than extraction.shard_size
SHARDS = shard_counts(config["extraction"], CONFIG_SOURCE)


def _gathered_files():
    """Each sharded set's gathered files (rules gather_activations, gather_codes) -> shards."""
    files = {}
    for name, count in SHARDS.items():
        for stage in ("activations", "codes"):
            shards = [
                f"results/{EXP}/{stage}/{name}.shards/{i:05d}.h5" for i in range(count)
            ]
            files[f"results/{EXP}/{stage}/{name}.h5"] = shards
    return files


# A gathered file reads its shards in place, but Snakemake does not rebuild a deleted
# intermediate file whose consumers are up to date (snakemake/snakemake#1978): a gathered file
# whose shard is gone is marked out of date, so the shard is rebuilt and its consumers rerun.
mark_stale_gathers(_gathered_files())


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


def prompt_input(path):
    """A prompt file as an input: none while a configured file is absent (ABSENT: only a dry
    run plans that far; a run stops first)."""
    absent = path in PROMPT_SETS.values() and not os.path.exists(path)
    return [] if absent else path


def get_prompts(wildcards):
    return prompt_input(prompt_file(wildcards.prompt_set))


def get_first_prompts(wildcards):
    """The first prompt set, the one the SAEs are evaluated on."""
    return prompt_input(prompt_file(next(iter(PROMPT_SETS))))


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
    """The trained toy model directory, or a local checkpoint's files; pretrained models come
    from the hub at run time."""
    if TOY:
        return {"model": rules.train_model.output.model}
    return {"model_files": MODEL_FILES} if MODEL_FILES else {}


def sae_corpus(experiment):
    """What SAEs train on: sae.corpus, or the toy world's train prompts."""
    return (
        config["sae"].get("corpus")
        or expand(toy_prompts("train")[0], experiment=experiment)[0]
    )


def get_sae_corpus(wildcards):
    """The corpus as an input, when it is a file or folder (not a cached dataset's name)."""
    corpus = sae_corpus(wildcards.experiment)
    own = not config["sae"].get("corpus")  # the toy world's prompts, made by toy_world
    return {"corpus": corpus} if own or os.path.exists(corpus) else {}


def get_sae_corpus_param(wildcards):
    return sae_corpus(wildcards.experiment)


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
    """The targets of `all`: every prompt set's codes, SAE metrics and figure sae_density,
    the model, and each stage in config["stages"] with its figures."""
    targets = expand(rules.encode.output.codes, experiment=EXP, prompt_set=PROMPT_SETS)
    targets += expand(rules.evaluate_saes.output.metrics, experiment=EXP)
    targets += expand(rules.plot_sae_density.output.png, experiment=EXP)
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
