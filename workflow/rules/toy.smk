# The embedded toy world: corpus + tokenizer, a HookedTransformer trained on it, and one
# sae-lens SAE per hook trained on its activations.


rule toy_world:
    output:
        prompts=expand("results/{{experiment}}/world/prompts/{name}.jsonl", name=TOY_PROMPT_SETS),
        tokenizer=directory("results/{experiment}/world/tokenizer"),
        truth="results/{experiment}/world/truth.json",
    params:
        world=config["world"],
        seed=config["seed"],
    log:
        "results/{experiment}/logs/toy_world.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/toy_world.py"


rule train_model:
    input:
        train="results/{experiment}/world/prompts/train.jsonl",
        heldout=expand("results/{{experiment}}/world/prompts/{name}.jsonl",
                       name=["heldout_seen", "heldout_unseen", "pairs"]),
        tokenizer="results/{experiment}/world/tokenizer",
    output:
        model=directory("results/{experiment}/model"),
    params:
        model=config["model"],
        seed=config["seed"],
        device=config["device"],
    threads: 2
    resources:
        gpu=1,
    log:
        "results/{experiment}/logs/train_model.log",
    benchmark:
        "results/{experiment}/benchmarks/train_model.tsv"
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/train_model.py"


rule train_sae:
    input:
        unpack(model_input),
        train="results/{experiment}/world/prompts/train.jsonl",
    output:
        sae=directory("results/{experiment}/sae/{hook}"),
    params:
        sae=config["sae"],
        seed=config["seed"],
        device=config["device"],
    threads: 2
    resources:
        gpu=1,
    log:
        "results/{experiment}/logs/train_sae/{hook}.log",
    benchmark:
        "results/{experiment}/benchmarks/train_sae/{hook}.tsv"
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/train_sae.py"


rule evaluate_saes:
    input:
        unpack(model_input),
        saes=sae_dirs,
        prompts=lambda wc: PROMPT_SETS[next(iter(PROMPT_SETS))],
    output:
        metrics="results/{experiment}/sae/metrics.json",
    params:
        sae=config["sae"],
        model=config["model"],
        device=config["device"],
        hooks=SAE_HOOKS,
    threads: 2
    resources:
        gpu=1,
    log:
        "results/{experiment}/logs/evaluate_saes.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/evaluate_saes.py"
