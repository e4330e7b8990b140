# SAE quality, for every study: L0, explained variance and the loss with each SAE (or
# transcoder) spliced in against the model alone, on the first prompt set.
# Library: saeflow/evaluate.py (evaluate_saes_stage; the SAEs load through saeflow/core/saes.py).
# Config: config["sae"], config["model"].


rule evaluate_saes:
    input:
        unpack(get_model),
        saes=get_sae_dirs,
        prompts=get_first_prompts,
    output:
        metrics="results/{experiment}/sae/metrics.json",
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
