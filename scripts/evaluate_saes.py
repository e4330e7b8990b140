"""Rule evaluate_saes: L0, explained variance and answer loss with each SAE spliced in vs without.

Inputs: the model, the SAEs, the first prompt set. Output: sae/metrics.json.
"""

from saeflow.core.io import write_json
from saeflow.core.models import load_model, tokenize_prompt_set
from saeflow.core.prompts import load_prompt_set
from saeflow.core.runtime import resolve_device, rule_main
from saeflow.core.saes import load_sae, sae_metrics


def body(snakemake):
    device = resolve_device(snakemake.params.device)
    model = load_model(snakemake.params.model, snakemake.input.get("model"), device)
    source = snakemake.input.prompts
    tokens, lengths, answers = tokenize_prompt_set(model.tokenizer, load_prompt_set(source), source)
    dirs = list(snakemake.input.saes) or [None] * len(snakemake.params.hooks)
    metrics = {}
    for hook, sae_dir in zip(snakemake.params.hooks, dirs, strict=True):
        sae = load_sae(snakemake.params.sae, hook, sae_dir, device)
        metrics[hook] = sae_metrics(model, sae, tokens, lengths, answers)
    write_json(
        snakemake.output.metrics,
        {"prompt_set": snakemake.input.prompts, "saes": metrics},
        config={"sae": snakemake.params.sae, "model": snakemake.params.model},
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
