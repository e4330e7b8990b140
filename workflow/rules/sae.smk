# SAE quality, for every study: SAEBench's core metrics of each SAE (or transcoder) on the
# first prompt set (L0, explained variance, loss and KL spliced and zero-ablated against the
# model alone, dead and dense latents), each latent's firing counts, and figure sae_density.
# Library: saeflow/evaluate.py (evaluate_saes_stage; the SAEs load through saeflow/core/saes.py),
# saeflow/sae_density.py (density.json, plot_sae_density_stage).
# Config: config["sae"], config["model"].


# SAE training, for any model (sae.source: train): sae-lens's runner over sae.corpus (the toy
# world: its train prompts) at sae.positions; a transcoder by saeflow's own loop. Checkpoints in
# results/{experiment}/checkpoints/sae/{hook}/: a killed job resumes from the latest.
# Library: saeflow/sae/ (train: train_sae_stage; corpus, data, checkpoints, transcoder).
# Config: config["sae"], config["model"].
rule train_sae:
    input:
        unpack(get_model),
        unpack(get_sae_corpus),
    output:
        sae=directory("results/{experiment}/sae/{hook}"),
    log:
        TRAIN_SAE_LOG,
    benchmark:
        "results/{experiment}/benchmarks/sae/train_sae/{hook}.tsv"
    conda:
        "../../envs/saeflow.yaml"
    threads: 1  # one per SAE: the toy's small matrices gain little from a second thread
    resources:
        gpu=1,
    params:
        sae=config["sae"],
        model=config["model"],
        corpus=get_sae_corpus_param,
        seed=config["seed"],
        device=config["device"],
    script:
        "../../scripts/train_sae.py"


rule evaluate_saes:
    input:
        unpack(get_model),
        saes=get_sae_dirs,
        prompts=get_first_prompts,
    output:
        metrics="results/{experiment}/sae/metrics.json",
        density="results/{experiment}/sae/density.json",
    log:
        "results/{experiment}/logs/sae/evaluate_saes/{experiment}.log",
    benchmark:
        "results/{experiment}/benchmarks/sae/evaluate_saes/{experiment}.tsv"
    conda:
        "../../envs/saeflow.yaml"
    threads: 1  # beside the other jobs of the stage; its numbers do not depend on it
    resources:
        gpu=1,
    params:
        sae=config["sae"],
        model=config["model"],
        device=config["device"],
        hooks=SAE_HOOKS,
    script:
        "../../scripts/evaluate_saes.py"


rule plot_sae_density:
    input:
        density=rules.evaluate_saes.output.density,
    output:
        png=report(
            "results/{experiment}/figures/sae_density.png",
            category="SAEs",
            caption="../report/sae_density.rst",
            labels={"figure": "sae_density"},
        ),
    log:
        "results/{experiment}/logs/sae/plot_sae_density/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_sae_density.py"
