# SAE codes: every SAE hook's sparse codes (CSR) and per-feature statistics. A sharded prompt
# set is encoded shard by shard; gather makes one codes file over the shards' CSR arrays.
# Library: saeflow/encode.py (encode_stage, encode_to_hdf5, gather_codes_stage); SAEs load
# through saeflow/core/saes.py; saeflow/formats/codes.py reads what it writes.
# Config: config["encoding"], config["sae"].


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
    wildcard_constraints:
        prompt_set=UNSHARDED,
    conda:
        "../../envs/saeflow.yaml"
    threads: 1  # the prompt sets side by side; a step's results do not depend on it
    resources:
        gpu=1,
    params:
        sae=config["sae"],
        encoding=config["encoding"],
        hooks=SAE_HOOKS,
        device=config["device"],
    script:
        "../../scripts/encode.py"


rule encode_shard:
    input:
        acts=rules.extract_shard.output.acts,
        saes=get_sae_dirs,
    output:
        codes="results/{experiment}/codes/{prompt_set}.shards/{shard}.h5",
    log:
        "results/{experiment}/logs/encode/encode_shard/{prompt_set}/{shard}.log",
    benchmark:
        "results/{experiment}/benchmarks/encode/encode_shard/{prompt_set}/{shard}.tsv"
    wildcard_constraints:
        prompt_set=SHARDED,
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


rule gather_codes:
    input:
        shards=get_code_shards,
    output:
        codes="results/{experiment}/codes/{prompt_set}.h5",
    log:
        "results/{experiment}/logs/encode/gather_codes/{prompt_set}.log",
    wildcard_constraints:
        prompt_set=SHARDED,
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    params:
        encoding=config["encoding"],
    script:
        "../../scripts/gather_codes.py"
