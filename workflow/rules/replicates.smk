# Spread over seeds (toy only, named target `replicates`, not in `all`): the whole DAG rerun
# with every seed of the config shifted by the replicate's index, in its own folder
# results/{experiment}/replicates/rep{i}/ (a nested snakemake run there; replicate 0 is the
# main run), and every headline number as mean, SD and range over the replicates.
# Library: saeflow/toy/replicates.py (replicate_stage, replicates_summary_stage; headline,
# summarise, table). Config: config["replicates"]. Globals and get_*: common_replicates.smk.


rule replicate:
    input:
        get_replicate_input,
    output:
        headline="results/{experiment}/replicates/rep{replicate}/headline.json",
    log:
        "results/{experiment}/logs/replicates/replicate/{replicate}.log",
    wildcard_constraints:
        replicate=r"\d+",
    localrule: True  # a nested snakemake run: it submits its own jobs, never one job itself
    conda:
        "../../envs/saeflow.yaml"
    # A whole DAG: one replicate at a time, on every core. Snakemake scales a rule's threads
    # down to --cores; workflow.cores cannot be read here (--summary, --report and the SLURM
    # profile give none).
    threads: 1024
    params:
        config=config,
        snakefile=workflow.main_snakefile,
    script:
        "../../scripts/replicate.py"


rule replicates_summary:
    input:
        headlines=get_replicate_headlines,
    output:
        summary="results/{experiment}/replicates/summary.json",
        table="results/{experiment}/replicates/table.md",
    log:
        "results/{experiment}/logs/replicates/replicates_summary/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/replicates_summary.py"
