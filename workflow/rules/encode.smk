# SAE codes: every SAE hook's sparse codes (CSR) and per-feature statistics.


rule encode:
    input:
        acts=rules.extract.output.acts,
        saes=get_sae_dirs,
    output:
        codes="results/{experiment}/codes/{prompt_set}.h5",
    log:
        "results/{experiment}/logs/encode/encode/{prompt_set}.log",
    benchmark:
        "results/{experiment}/benchmarks/encode/encode/{prompt_set}.tsv"
    conda:
        "../../envs/saeflow.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        sae=config["sae"],
        encoding=config["encoding"],
        hooks=SAE_HOOKS,
        device=config["device"],
    script:
        "../../scripts/encode.py"
