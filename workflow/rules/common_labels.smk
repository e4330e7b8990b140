# Globals and input functions (get_*) of the rules in labels.smk, included just before it.

# Included when the config has a labels section; `all` runs the stages config["stages"]
# lists, each checked to have its section.
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
    """Toy (activations) and autointerp: codes, activations and the toy's model (its
    tokenizer decodes the contexts; a pretrained model's comes from the hub); Neuronpedia:
    your export folder, else the manifest fetch_neuronpedia wrote, and the codes (their
    d_sae is the SAE's width, which every exported index must fit)."""
    if LABELS["describe"]["backend"] == "neuronpedia":
        if LABELS["describe"].get("folder"):
            return {"folder": LABELS["describe"]["folder"], "codes": labels_codes()}
        return {
            "manifest": rules.fetch_neuronpedia.output.manifest,
            "codes": labels_codes(),
        }
    return {
        "codes": labels_codes(),
        "activations": labels_activations(),
        **get_model(wildcards),
    }


def labels_sae_key():
    """The config key that names the labelled hook's SAE, for messages about its width."""
    key = {"pretrained": "ids", "local": "paths"}.get(config["sae"]["source"])
    return f"sae.{key}.{LABELS['hook']}" if key else "sae.d_sae"


def fetch_retry():
    """How rule fetch_neuronpedia retries a batch whose connection drops mid-body."""
    return {k: LABELS["describe"][k] for k in ("max_retries", "backoff_s")}


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
