# Globals and input functions (get_*) of the rules in dashboards.smk, included just before it.
from saeflow.core.config import fail
from saeflow.core.config_checks import check_dashboard_corpus
from saeflow.core.errors import InputError

# The schema gives every config a dashboards section.
DASHBOARDS = config["dashboards"]
# The prompt set whose codes and tokens the contexts come from.
DASHBOARD_SET = (
    DASHBOARDS["prompt_set"]
    or config.get("labels", {}).get("prompt_set")
    or next(iter(PROMPT_SETS))
)
# The SAE the labels stage describes and classifies (its descriptions and labels join the
# pages of that hook), when the study runs the stage.
DASHBOARD_LABEL_HOOK = (
    config["labels"]["hook"] if "labels" in config["stages"] else None
)


def get_dashboard_sources(wildcards):
    """The results dashboard_latents chooses latents from: each source of dashboards.from
    whose stage the study runs (saeflow.latents.selection)."""
    wanted, stages, inputs = DASHBOARDS["from"], config["stages"], {}
    if "circuit" in wanted and "patch" in stages:
        inputs["circuit"] = rules.patch_circuit.output.circuit
    if "probe" in wanted and "probe" in stages and PROBE_EFFECTS:
        inputs["effects"] = get_probe_effects(wildcards)
    if "categories" in wanted and "labels" in stages and LABEL_CATS:
        inputs["classified"] = expand(
            rules.classify.output.classified, category=LABEL_CATS, allow_missing=True
        )
    return inputs


def get_dashboard_circuit(wildcards):
    """The circuit the front page draws, its latent nodes linking to their pages."""
    if "circuit" in DASHBOARDS["from"] and "patch" in config["stages"]:
        return {"circuit": rules.patch_circuit.output.circuit}
    return {}


def get_dashboard_corpus(wildcards):
    """The codes and activations of the dashboards' prompt set, which must hold every token:
    else one line naming extraction.positions, before any job runs."""
    try:
        check_dashboard_corpus(config["extraction"], CONFIG_SOURCE)
    except InputError as err:
        fail(err)
    return {
        "codes": expand(
            rules.encode.output.codes, prompt_set=DASHBOARD_SET, allow_missing=True
        )[0],
        "activations": expand(
            rules.extract.output.acts, prompt_set=DASHBOARD_SET, allow_missing=True
        )[0],
    }


def get_dashboard_labels(wildcards):
    """Descriptions (with any auto-interp scores) and classifier labels of the labelled SAE,
    for its pages only."""
    if wildcards.hook != DASHBOARD_LABEL_HOOK:
        return {}
    return {
        "descriptions": rules.describe.output.descriptions,
        "classified": expand(
            rules.classify.output.classified, category=LABEL_CATS, allow_missing=True
        ),
    }


def get_dashboard_sae(wildcards):
    """The SAE directory of the page's hook (none for pretrained SAEs: from the hub)."""
    dirs = sae_dirs()
    return [dirs[SAE_HOOKS.index(wildcards.hook)]] if dirs else []


def get_dashboard_hooks(wildcards):
    return [wildcards.hook]
