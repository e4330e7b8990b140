# Extraction: hook activations at chosen positions, one HDF5 file per prompt set.


rule extract:
    input:
        unpack(model_input),
        prompts=prompt_set_file,
    output:
        acts="results/{experiment}/activations/{prompt_set}.h5",
    params:
        extraction=config["extraction"],
        model=config["model"],
        device=config["device"],
    threads: 2
    resources:
        gpu=1,
    log:
        "results/{experiment}/logs/extract/{prompt_set}.log",
    benchmark:
        "results/{experiment}/benchmarks/extract/{prompt_set}.tsv"
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/extract.py"
