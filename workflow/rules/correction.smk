# Linear-system correction: the loss increase of ablating each category's features (and a
# random matched-size "other" set), the study file, and loss per feature corrected for the
# classifier's noise, one job per method (a method whose system is singular fails alone, with
# a one-line reason in its log); toy only: the corrections against the truth and against
# planted label noise (named target `validation`).
# Library: saeflow/labels/ ablation (ablate_categories), study (correction_study), correction
# (correct, correction_summary), planting (planted label noise) and validation
# (validate_correction), plots (plot_lpf). Config: config["labels"] (ablation, correction,
# validation), config["model"], config["sae"]; the model-running rules get the model and the
# labelled hook's SAE as one saeflow.core.bundle.ModelSAEs (params model, sae, hooks; inputs
# model, saes). Globals LABELS, LABEL_CATS, LPF_METHODS, IS_ORACLE: labels.smk.


rule ablate_categories:
    input:
        unpack(get_toy_membership),
        unpack(get_model),
        saes=get_labels_sae,
        activations=get_labels_activations,
        descriptions=rules.describe.output.descriptions,
        classified=get_classified,
    output:
        ablation="results/{experiment}/labels/ablation.json",
    log:
        "results/{experiment}/logs/correction/ablate_categories/{experiment}.log",
    benchmark:
        "results/{experiment}/benchmarks/correction/ablate_categories/{experiment}.tsv"
    conda:
        "../../envs/saeflow.yaml"
    resources:
        gpu=1,
    params:
        model=config["model"],
        sae=config["sae"],
        hooks=[LABELS["hook"]],
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
        "results/{experiment}/logs/correction/correction_study/{experiment}.log",
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
        "results/{experiment}/logs/correction/correct/{method}.log",
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
            "results/{experiment}/logs/correction/correction_summary/{experiment}.log",
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
            saes=get_labels_sae,
            activations=get_labels_activations,
            descriptions=rules.describe.output.descriptions,
            membership=rules.truth_membership.output.membership,
        output:
            validation="results/{experiment}/correction/validation.json",
        log:
            "results/{experiment}/logs/correction/validate_correction/{experiment}.log",
        benchmark:
            "results/{experiment}/benchmarks/correction/validate_correction/{experiment}.tsv"
        conda:
            "../../envs/saeflow.yaml"
        threads: 2
        resources:
            gpu=1,
        params:
            model=config["model"],
            sae=config["sae"],
            hooks=[LABELS["hook"]],
            ablation=LABELS["ablation"],
            sample=LABELS["sample"],
            validation=LABELS["validation"],
            methods=LPF_METHODS,
        script:
            "../../scripts/validate_correction.py"


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
        "results/{experiment}/logs/correction/plot_lpf/{method}.log",
    wildcard_constraints:
        method=_alternatives(LPF_METHODS),
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_lpf.py"
