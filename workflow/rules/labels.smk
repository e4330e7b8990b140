# Labels: feature descriptions -> category classification -> human (or oracle) labels ->
# agreement -> category ablation -> study file -> loss-per-feature correction, one job per method
# (a method whose system is singular fails alone, with a one-line reason in its log).
# Library: saeflow/labels/ (describe, classify, labelling, agreement, ablation, study,
# correction, plots). Config: config["labels"] (keys and defaults:
# workflow/schemas/config.schema.yaml, described in config/README.md), config["model"],
# config["sae"]. Toy-only rules (truth_membership, label_oracle, correction_summary,
# validate_correction) need the toy world's truth.json. LABELS, LABEL_CATS, LPF_METHODS,
# IS_ORACLE and get_*: common.smk.


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


rule ablate_categories:
    input:
        unpack(get_toy_membership),
        unpack(get_model),
        unpack(get_labels_sae),
        activations=get_labels_activations,
        descriptions=rules.describe.output.descriptions,
        classified=get_classified,
    output:
        ablation="results/{experiment}/labels/ablation.json",
    log:
        "results/{experiment}/logs/labels/ablate_categories/{experiment}.log",
    benchmark:
        "results/{experiment}/benchmarks/labels/ablate_categories/{experiment}.tsv"
    conda:
        "../../envs/saeflow.yaml"
    resources:
        gpu=1,
    params:
        model=config["model"],
        sae=config["sae"],
        hook=LABELS["hook"],
        categories=LABEL_CATS,
        ablation=LABELS["ablation"],
    script:
        "../../scripts/ablate_categories.py"


rule correction_study:
    input:
        ablation=rules.ablate_categories.output.ablation,
        agreements=get_agreements,
        classified=get_classified,
        humans=get_all_human_labels,
    output:
        study="results/{experiment}/correction/study.yaml",
    log:
        "results/{experiment}/logs/labels/correction_study/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    params:
        categories=LABEL_CATS,
    script:
        "../../scripts/correction_study.py"


rule correct:
    input:
        study=rules.correction_study.output.study,
    output:
        result="results/{experiment}/correction/{method}.json",
    log:
        "results/{experiment}/logs/labels/correct/{method}.log",
    wildcard_constraints:
        method=_alternatives(LPF_METHODS),
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    params:
        method="{method}",
        correction=LABELS["correction"],
    script:
        "../../scripts/correct.py"


if IS_ORACLE:

    rule correction_summary:
        input:
            results=expand(
                rules.correct.output.result, method=LPF_METHODS, allow_missing=True
            ),
            ablation=rules.ablate_categories.output.ablation,
            study=rules.correction_study.output.study,
        output:
            summary="results/{experiment}/correction/summary.json",
        log:
            "results/{experiment}/logs/labels/correction_summary/{experiment}.log",
        localrule: True  # light bookkeeping against the toy world's truth
        conda:
            "../../envs/saeflow.yaml"
        params:
            methods=LPF_METHODS,
            correction=LABELS["correction"],
        script:
            "../../scripts/correction_summary.py"

    # Not in `all` (minutes of ablations): the named target `validation` runs it.
    rule validate_correction:
        input:
            unpack(get_model),
            unpack(get_labels_sae),
            activations=get_labels_activations,
            descriptions=rules.describe.output.descriptions,
            membership=rules.truth_membership.output.membership,
        output:
            validation="results/{experiment}/correction/validation.json",
        log:
            "results/{experiment}/logs/labels/validate_correction/{experiment}.log",
        benchmark:
            "results/{experiment}/benchmarks/labels/validate_correction/{experiment}.tsv"
        conda:
            "../../envs/saeflow.yaml"
        threads: 2
        resources:
            gpu=1,
        params:
            model=config["model"],
            sae=config["sae"],
            hook=LABELS["hook"],
            ablation=LABELS["ablation"],
            sample=LABELS["sample"],
            validation=LABELS["validation"],
            methods=LPF_METHODS,
        script:
            "../../scripts/validate_correction.py"


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


rule plot_lpf:
    input:
        unpack(get_lpf_truth),
        result=rules.correct.output.result,
    output:
        png=report(
            "results/{experiment}/figures/lpf_{method}.png",
            category="Labels",
            caption="../report/lpf.rst",
            labels={"figure": "lpf_{method}", "method": "{method}"},
        ),
    log:
        "results/{experiment}/logs/labels/plot_lpf/{method}.log",
    wildcard_constraints:
        method=_alternatives(LPF_METHODS),
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_lpf.py"
