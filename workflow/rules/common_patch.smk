# Globals and input functions (get_*) of the rules in patch.smk, included just before it.

# Included when the config has a patch section.
PATCH = config.get("patch", {})
# The node estimators patch_estimate runs, one job each; their registry is
# saeflow/patch/estimators.py, whose names the schema's enum lists (atp always among them).
PATCH_ESTIMATORS = PATCH.get("estimators", [])


def get_patch_pairs(wildcards):
    return PATCH["pairs"]


def get_patch_descriptions(wildcards):
    return PATCH["descriptions"] or []


def get_patch_truth(wildcards):
    return PATCH["truth"] or []


def get_patch_exact(wildcards):
    """The exhaustive exact-patching reference, when patch.exhaustive asks for it."""
    return rules.patch_exact.output.exact if PATCH["exhaustive"] else []


def patch_estimate_file(estimator):
    """Rule patch_estimate's file of node estimator ``estimator`` ({experiment} open)."""
    (path,) = expand(
        rules.patch_estimate.output.h5, estimator=estimator, allow_missing=True
    )
    return path


def get_patch_estimates(wildcards):
    """Each estimator of patch.estimators (atp always) -> its file, as named inputs."""
    return {name: patch_estimate_file(name) for name in PATCH_ESTIMATORS}
