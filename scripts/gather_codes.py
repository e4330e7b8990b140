"""Rule gather_codes: one prompt set's code shards as one codes file.

Input: ``shards`` (codes/{prompt_set}.shards/*.h5, in order). Params: ``encoding``.
Output: ``codes`` (results/{experiment}/codes/{prompt_set}.h5, CSR arrays virtual over the
shards).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.encode import gather_codes_stage

    gather_codes_stage(
        list(snakemake.input.shards),
        snakemake.output.codes,
        config={"encoding": snakemake.params.encoding},
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
