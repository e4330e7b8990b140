"""Rule ablate_categories: loss with each category's features zero-ablated (SAE + error term).

Inputs: ``model`` (model.pt), ``sae`` (sae/{hook}/cfg.json), ``activations`` (eval prompts),
``descriptions``, ``classified`` (one per category, in config order), toy only:
``membership`` (the true members of each category). Params: ``model``, ``sae``, ``hook``,
``categories`` (names, in the order of ``classified``), ``ablation`` ({eval, batch_size,
seed, device, other_size}). Output: ``ablation`` (results/{experiment}/labels/ablation.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.ablation import ablate_categories, eval_set_from_h5
    from saeflow.core.io import read_json, write_json
    from saeflow.core.models import load_model
    from saeflow.core.runtime import resolve_device, seed_everything
    from saeflow.core.saes import load_sae

    cfg = snakemake.params.ablation
    seed_everything(cfg["seed"])
    device = resolve_device(cfg["device"])
    model = load_model(snakemake.params.model, snakemake.input.get("model"), device)
    sae = load_sae(snakemake.params.sae, snakemake.params.hook, snakemake.input.get("sae"), device)
    inputs = dict(snakemake.input.items())
    truth = read_json(inputs["membership"])["members"] if "membership" in inputs else None
    eval_set = eval_set_from_h5(snakemake.input.activations, cfg["eval"])
    result = ablate_categories(
        model,
        sae,
        eval_set,
        dict(zip(snakemake.params.categories, snakemake.input.classified)),
        snakemake.input.descriptions,
        cfg["seed"],
        cfg["batch_size"],
        truth,
        cfg["other_size"],
    )
    write_json(snakemake.output.ablation, result, {"ablation": cfg, "hook": snakemake.params.hook})


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
