# SAE encoding: sparse codes (CSR) and per-feature statistics for every SAE hook.


rule encode:
    input:
        acts="results/{experiment}/activations/{prompt_set}.h5",
        saes=sae_dirs,
    output:
        codes="results/{experiment}/codes/{prompt_set}.h5",
    params:
        sae=config["sae"],
        encoding=config["encoding"],
        hooks=SAE_HOOKS,
        device=config["device"],
    threads: 2
    resources:
        gpu=1,
    log:
        "results/{experiment}/logs/encode/{prompt_set}.log",
    benchmark:
        "results/{experiment}/benchmarks/encode/{prompt_set}.tsv"
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/encode.py"
