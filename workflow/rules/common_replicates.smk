# Globals and input functions (get_*) of the rules in replicates.smk, included just before it.

# Replicate 0 is the main run: its headline numbers are read from results/{experiment}/.
REPLICATES = list(range(config["replicates"]["n"]))


def get_replicate_input(wildcards):
    """Replicate 0 reads the main run's outputs (every target of `all`); the others run their
    own DAG in their own folder and need nothing of this one."""
    return get_final_output() if int(wildcards.replicate) == 0 else []


def get_replicate_headlines(wildcards):
    return expand(
        rules.replicate.output.headline,
        experiment=wildcards.experiment,
        replicate=REPLICATES,
    )
