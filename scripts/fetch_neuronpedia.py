"""Rule fetch_neuronpedia: download a source's Neuronpedia explanation exports into the cache.

Params: ``url`` (labels.describe.exports_url), ``cache_dir``, ``model_id``, ``source``,
``retry`` (labels.describe's ``max_retries``, ``backoff_s``: a batch whose connection drops
mid-body). Output: ``manifest`` (results/{experiment}/labels/neuronpedia_exports.json: the
cached folder and each batch's sha256). Batches already cached (and sound) are not fetched
again.
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.exports import fetch_neuronpedia_stage

    p = snakemake.params
    fetch_neuronpedia_stage(p.url, p.model_id, p.source, p.cache_dir, p.retry,
                            snakemake.output.manifest)


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
