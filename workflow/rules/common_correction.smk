# Globals and input functions (get_*) of the rules in correction.smk, included just before it.


def get_toy_membership(wildcards):
    """Toy world only: the true category members, whose ablation is reported too."""
    if not IS_ORACLE:
        return {}
    return {"membership": rules.truth_membership.output.membership}


def get_labels_sae(wildcards):
    """The labelled hook's SAE directory as a list of one, the ``saes`` of a ModelSAEs with
    hooks ``[LABELS["hook"]]`` (empty for pretrained SAEs, which come from the hub)."""
    dirs = dict(zip(SAE_HOOKS, sae_dirs()))
    return [dirs[LABELS["hook"]]] if LABELS["hook"] in dirs else []


def get_lpf_truth(wildcards):
    """Toy world only: the ablation file holding the true LPF the figure marks."""
    return {"ablation": rules.ablate_categories.output.ablation} if IS_ORACLE else {}
