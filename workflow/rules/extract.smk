# Extraction: hook activations at chosen positions, one HDF5 file per prompt set. A set longer
# than extraction.shard_size is extracted shard by shard (parallel gpu jobs); gather makes
# the one file later stages read, its activations virtual datasets over the shards.
# Library: saeflow/extract.py (extract_stage, extract_to_hdf5, gather_activations_stage); the
# model loads through saeflow/core/models.py, prompts through saeflow/core/prompts.py, and
# saeflow/formats/activations.py reads what it writes. Config: config["extraction"], config["model"].


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
    wildcard_constraints:
        prompt_set=UNSHARDED,
    conda:
        "../../envs/saeflow.yaml"
    threads: 1  # the prompt sets side by side; a step's results do not depend on it
    resources:
        gpu=1,
    params:
        extraction=config["extraction"],
        model=config["model"],
        device=config["device"],
    script:
        "../../scripts/extract.py"


rule extract_shard:
    input:
        unpack(get_model),
        prompts=get_prompts,
    output:
        acts="results/{experiment}/activations/{prompt_set}.shards/{shard}.h5",
    log:
        "results/{experiment}/logs/extract/extract_shard/{prompt_set}/{shard}.log",
    benchmark:
        "results/{experiment}/benchmarks/extract/extract_shard/{prompt_set}/{shard}.tsv"
    wildcard_constraints:
        prompt_set=SHARDED,
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


rule gather_activations:
    input:
        shards=get_activation_shards,
    output:
        acts="results/{experiment}/activations/{prompt_set}.h5",
    log:
        "results/{experiment}/logs/extract/gather_activations/{prompt_set}.log",
    wildcard_constraints:
        prompt_set=SHARDED,
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    params:
        extraction=config["extraction"],
    script:
        "../../scripts/gather_activations.py"
