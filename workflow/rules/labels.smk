# Labels: feature descriptions -> category classification -> human (or oracle) labels ->
# agreement -> category ablation -> study file -> loss-per-feature correction, one job per method
# (a method whose system is singular fails alone, with a one-line reason in its log).
# Library: saeflow/labels/describe.py, classify.py, labelling.py,
# agreement.py, ablation.py, study.py, correction.py, plots_labels.py. Expects config["labels"]:
#
#   labels:
#     prompt_set: heldout_seen            # codes/activations the descriptions and eval use
#     hook: blocks.1.hook_resid_post      # the SAE whose features are labelled
#     describe: {backend: activations, top_k: 5, n_contexts: 3, context: 4}
#       # real SAEs: {backend: neuronpedia, folder: path/to/exports, source: 12-gemmascope-res-65k}
#     categories:                         # name -> classifier options + the human's question;
#       digits: {backend: keyword, patterns: [...], token_classes: [digit], question: "..."}
#       # toy defaults: saeflow.labels.classify.toy_categories(); llm: {backend: llm, question, llm: {...}}
#     labeller: oracle                    # toy; "human" reads labels.human[category] instead,
#     human: {}                           #   files written by `saeflow label` (kept outside results/)
#     membership_threshold: 0.5
#     sample: {n: 300, seed: 42}
#     agreement: {n_boot: 2000, seed: 0}
#     ablation: {eval: answer, batch_size: 32, seed: 0, device: auto, other_size: null}
#     correction: {methods: [naive, two-bucket, general], n_boot: 2000, seed: 0}
#
# plus config["model"], config["sae"] as the other stages use them. Toy-only rules
# (truth_membership, label_oracle, correction_summary) need results/{experiment}/world/truth.json.
# LABELS, LABEL_CATS, LPF_METHODS, IS_ORACLE and the input functions: common.smk.


rule describe:
    input:
        unpack(labels_describe_inputs),
    output:
        descriptions="results/{experiment}/labels/descriptions.json",
    params:
        describe=LABELS["describe"],
        hook=LABELS["hook"],
    log:
        "results/{experiment}/logs/labels/describe.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/describe.py"


rule classify:
    input:
        descriptions="results/{experiment}/labels/descriptions.json",
    output:
        classified="results/{experiment}/labels/classified/{category}.json",
    params:
        category=lambda wc: wc.category,
        categories=LABELS["categories"],
    log:
        "results/{experiment}/logs/labels/classify_{category}.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/classify.py"


if IS_ORACLE:

    rule truth_membership:
        localrule: True  # light bookkeeping against the toy world's truth
        input:
            codes=f"results/{{experiment}}/codes/{LABELS['prompt_set']}.h5",
            activations=f"results/{{experiment}}/activations/{LABELS['prompt_set']}.h5",
            truth="results/{experiment}/world/truth.json",
        output:
            membership="results/{experiment}/labels/truth_membership.json",
        params:
            categories=LABELS["categories"],
            hook=LABELS["hook"],
            threshold=LABELS.get("membership_threshold", 0.5),
        log:
            "results/{experiment}/logs/labels/truth_membership.log",
        conda:
            "../../envs/saeflow.yaml"
        script:
            "../../scripts/truth_membership.py"

    rule label_oracle:
        localrule: True  # light bookkeeping against the toy world's truth
        input:
            descriptions="results/{experiment}/labels/descriptions.json",
            membership="results/{experiment}/labels/truth_membership.json",
        output:
            labels="results/{experiment}/labels/oracle/{category}.json",
        params:
            category=lambda wc: wc.category,
            categories=LABELS["categories"],
            sample=LABELS["sample"],
        log:
            "results/{experiment}/logs/labels/label_oracle_{category}.log",
        conda:
            "../../envs/saeflow.yaml"
        script:
            "../../scripts/label_oracle.py"


rule agree:
    input:
        human=labels_human,
        model="results/{experiment}/labels/classified/{category}.json",
    output:
        json="results/{experiment}/labels/agreement/{category}.json",
        csv="results/{experiment}/labels/agreement/{category}.csv",
    params:
        agreement=LABELS["agreement"],
    log:
        "results/{experiment}/logs/labels/agree_{category}.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/agree.py"


rule ablate_categories:
    input:
        unpack(labels_toy_inputs),
        unpack(model_input),
        unpack(lambda wc: sae_dir(LABELS["hook"])),
        activations=f"results/{{experiment}}/activations/{LABELS['prompt_set']}.h5",
        descriptions="results/{experiment}/labels/descriptions.json",
        classified=expand("results/{{experiment}}/labels/classified/{category}.json",
                          category=LABEL_CATS),
    output:
        ablation="results/{experiment}/labels/ablation.json",
    params:
        model=config["model"],
        sae=config["sae"],
        hook=LABELS["hook"],
        categories=LABEL_CATS,
        ablation=LABELS["ablation"],
    log:
        "results/{experiment}/logs/labels/ablate_categories.log",
    resources:
        gpu=1,
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/ablate_categories.py"


rule correction_study:
    input:
        ablation="results/{experiment}/labels/ablation.json",
        agreements=expand("results/{{experiment}}/labels/agreement/{category}.json",
                          category=LABEL_CATS),
        classified=expand("results/{{experiment}}/labels/classified/{category}.json",
                          category=LABEL_CATS),
        humans=labels_humans,
    output:
        study="results/{experiment}/correction/study.yaml",
    params:
        categories=LABEL_CATS,
    log:
        "results/{experiment}/logs/labels/correction_study.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/correction_study.py"


rule correct:
    input:
        study="results/{experiment}/correction/study.yaml",
    output:
        result="results/{experiment}/correction/{method}.json",
    wildcard_constraints:
        method="|".join(LPF_METHODS),
    params:
        method=lambda wc: wc.method,
        correction=LABELS["correction"],
    log:
        "results/{experiment}/logs/labels/correct_{method}.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/correct.py"


if IS_ORACLE:

    rule correction_summary:
        localrule: True  # light bookkeeping against the toy world's truth
        input:
            results=expand("results/{{experiment}}/correction/{method}.json", method=LPF_METHODS),
            ablation="results/{experiment}/labels/ablation.json",
        output:
            summary="results/{experiment}/correction/summary.json",
        params:
            methods=LPF_METHODS,
        log:
            "results/{experiment}/logs/labels/correction_summary.log",
        conda:
            "../../envs/saeflow.yaml"
        script:
            "../../scripts/correction_summary.py"


rule plot_confusion:
    input:
        agreements=expand("results/{{experiment}}/labels/agreement/{category}.json",
                          category=LABEL_CATS),
    output:
        png=report("results/{experiment}/figures/labels_confusion.png", category="Labels",
                   caption="../report/labels_confusion.rst", labels={"figure": "confusion"}),
    params:
        categories=LABEL_CATS,
    log:
        "results/{experiment}/logs/labels/plot_confusion.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_confusion.py"


rule plot_lpf:
    input:
        unpack(lambda wc: {"ablation": f"results/{wc.experiment}/labels/ablation.json"}
               if IS_ORACLE else {}),
        result="results/{experiment}/correction/{method}.json",
    output:
        png=report("results/{experiment}/figures/lpf_{method}.png", category="Labels",
                   caption="../report/lpf.rst", labels={"figure": "LPF", "method": "{method}"}),
    wildcard_constraints:
        method="|".join(LPF_METHODS),
    log:
        "results/{experiment}/logs/labels/plot_lpf_{method}.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_lpf.py"


rule fig_confusion:
    input:
        f"results/{EXP}/figures/labels_confusion.png",


rule fig_lpf:
    input:
        expand("results/{experiment}/figures/lpf_{method}.png", experiment=EXP, method=LPF_METHODS),
