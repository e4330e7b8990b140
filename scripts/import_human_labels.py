"""Rule import_human_labels: check a category's human labels file and copy it into results/.

Inputs: ``human`` (your labels file, once it exists), ``descriptions``. Params: ``category``,
``question``, ``human`` (its path in labels.human), ``sample`` ({n, seed}), ``config_source``
(the config files, for the message). Output: ``labels``
(results/{experiment}/labels/human/{category}.json). Without the file it stops with the
``saeflow label`` command that writes it.
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.labelling import import_human_labels_stage

    import_human_labels_stage(
        snakemake.input.get("human"),
        snakemake.params.human,
        snakemake.input.descriptions,
        snakemake.params.category,
        snakemake.params.question,
        snakemake.params.sample,
        snakemake.output.labels,
        snakemake.params.config_source,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
