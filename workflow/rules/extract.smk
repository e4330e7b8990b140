# Extraction: hook activations at chosen positions, one HDF5 file per prompt set.


rule extract:
    input:
        unpack(get_model),
        prompts=get_prompts,
    output:
        acts="results/{experiment}/activations/{prompt_set}.h5",
    log:
        "results/{experiment}/logs/extract/extract/{prompt_set}.log",
    benchmark:
        "results/{experiment}/benchmarks/extract/extract/{prompt_set}.tsv"
    conda:
        "../../envs/saeflow.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        extraction=config["extraction"],
        model=config["model"],
        device=config["device"],
    script:
        "../../scripts/extract.py"
