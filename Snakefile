# saeflow's entry point: `snakemake` in this folder runs the workflow in workflow/Snakefile
# with config/config.yaml (the toy world); `--configfile my.yaml` runs a study config instead.


include: "workflow/Snakefile"


# include: drops an included file's default target (snakemake/snakemake#2056), so the entry
# point names it again: `snakemake` with no target runs rule all.
workflow.default_target = "all"
