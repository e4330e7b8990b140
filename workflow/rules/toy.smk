# The embedded toy world: corpus + tokenizer and a HookedTransformer trained on it (its SAEs
# are trained by rule train_sae in sae.smk, on the world's train prompts).
# Library: saeflow/toy/ (world: corpus, tokenizer, prompt sets, truth; train: the model).
# Config: config["world"], config["model"].


rule toy_world:
    output:
        prompts=expand(
            "results/{{experiment}}/world/prompts/{name}.jsonl", name=TOY_PROMPT_SETS
        ),
        tokenizer=directory("results/{experiment}/world/tokenizer"),
        truth="results/{experiment}/world/truth.json",
    log:
        "results/{experiment}/logs/toy/toy_world/{experiment}.log",
    conda:
        "../../envs/saeflow.yaml"
    params:
        world=config["world"],
        seed=config["seed"],
    script:
        "../../scripts/toy_world.py"


rule train_model:
    input:
        train=toy_prompts("train")[0],
        heldout=toy_prompts("heldout_seen", "heldout_unseen", "pairs"),
        tokenizer=rules.toy_world.output.tokenizer,
    output:
        model=directory("results/{experiment}/model"),
    log:
        "results/{experiment}/logs/toy/train_model/{experiment}.log",
    benchmark:
        "results/{experiment}/benchmarks/toy/train_model/{experiment}.tsv"
    conda:
        "../../envs/saeflow.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        model=config["model"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../../scripts/train_model.py"
