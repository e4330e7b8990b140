# Labels: feature descriptions -> category classification -> human (or oracle) labels ->
# agreement; the correction that uses them is correction.smk.
# Library: saeflow/labels/ (its __init__ lists them): exports (fetch_neuronpedia), describe
# (describe, truth_membership; its autointerp backend: autointerp, explainer, scorers),
# classify, labelling (import_human_labels, label_oracle; serve, serve_page: `saeflow label
# --serve`), agreement (agree), plots (plot_confusion).
# Config: config["labels"] (keys and defaults: workflow/schemas/config.schema.yaml, described
# in config/README.md). Toy-only rules (truth_membership, label_oracle) need the toy world's
# truth.json. The stage's globals and get_* functions: common_labels.smk.


rule fetch_neuronpedia:
    output:
        manifest="results/{experiment}/labels/neuronpedia_exports.json",
    log:
        "results/{experiment}/logs/labels/fetch_neuronpedia/{experiment}.log",
    localrule: True  # a download: the submit host reaches the internet, cluster nodes may not
    conda:
        "../../envs/saeflow.yaml"
    params:
        url=LABELS.get("describe", {}).get("exports_url"),
        cache_dir=LABELS.get("describe", {}).get("cache_dir"),
        model_id=neuronpedia_model_id(),
        source=LABELS.get("describe", {}).get("source"),
        retry=fetch_retry(),
    script:
        "../../scripts/fetch_neuronpedia.py"


rule describe:
    input:
        unpack(get_describe_input),
    output:
        descriptions="results/{experiment}/labels/descriptions.json",
    log:
        "results/{experiment}/logs/labels/describe/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    params:
        describe=LABELS["describe"],
        hook=LABELS["hook"],
        sae_key=labels_sae_key(),
        model=config["model"],
    script:
        "../../scripts/describe.py"


rule classify:
    input:
        descriptions=rules.describe.output.descriptions,
    output:
        classified="results/{experiment}/labels/classified/{category}.json",
    log:
        "results/{experiment}/logs/labels/classify/{category}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    params:
        category="{category}",
        categories=LABELS["categories"],
        min_score=LABELS["describe"].get("min_score", {}),
    script:
        "../../scripts/classify.py"


if IS_ORACLE:

    rule truth_membership:
        input:
            codes=get_labels_codes,
            activations=get_labels_activations,
            truth=rules.toy_world.output.truth,
        output:
            membership="results/{experiment}/labels/truth_membership.json",
        log:
            "results/{experiment}/logs/labels/truth_membership/{experiment}.log",
        localrule: True  # light bookkeeping against the toy world's truth
        conda:
            "../../envs/saeflow.yaml"
        params:
            categories=LABELS["categories"],
            hook=LABELS["hook"],
            threshold=LABELS["membership_threshold"],
        script:
            "../../scripts/truth_membership.py"

    rule label_oracle:
        input:
            descriptions=rules.describe.output.descriptions,
            membership=rules.truth_membership.output.membership,
        output:
            labels="results/{experiment}/labels/oracle/{category}.json",
        log:
            "results/{experiment}/logs/labels/label_oracle/{category}.log",
        localrule: True  # light bookkeeping against the toy world's truth
        conda:
            "../../envs/saeflow.yaml"
        params:
            category="{category}",
            categories=LABELS["categories"],
            sample=LABELS["sample"],
        script:
            "../../scripts/label_oracle.py"


if not IS_ORACLE:

    rule import_human_labels:
        input:
            unpack(get_human_labels_file),
            descriptions=rules.describe.output.descriptions,
        output:
            labels="results/{experiment}/labels/human/{category}.json",
        log:
            "results/{experiment}/logs/labels/import_human_labels/{category}.log",
        localrule: True  # checks and copies your file; it never writes to it
        conda:
            "../../envs/saeflow.yaml"
        params:
            category="{category}",
            question=get_question,
            human=get_human_labels_path,
            sample=LABELS["sample"],
            config_source=CONFIG_SOURCE,
        script:
            "../../scripts/import_human_labels.py"


rule agree:
    input:
        human=get_human_labels,
        model=rules.classify.output.classified,
    output:
        json="results/{experiment}/labels/agreement/{category}.json",
        csv="results/{experiment}/labels/agreement/{category}.csv",
    log:
        "results/{experiment}/logs/labels/agree/{category}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    params:
        agreement=LABELS["agreement"],
    script:
        "../../scripts/agree.py"


rule plot_confusion:
    input:
        agreements=get_agreements,
    output:
        png=report(
            "results/{experiment}/figures/confusion.png",
            category="Labels",
            caption="../report/confusion.rst",
            labels={"figure": "confusion"},
        ),
    log:
        "results/{experiment}/logs/labels/plot_confusion/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    params:
        categories=LABEL_CATS,
    script:
        "../../scripts/plot_confusion.py"
