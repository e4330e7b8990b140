"""Rule ablate_categories: loss with each category's features zero-ablated (SAE + error term).

Inputs: ``model`` (model.pt), ``sae`` (sae/{hook}/cfg.json), ``activations`` (eval prompts),
``descriptions``, ``classified`` (one per category, in config order), toy only: ``truth``
(world/truth.json, answer token ids) and ``membership``. Params: ``model``, ``sae``, ``hook``,
``categories`` (names, in the order of ``classified``), ``ablation`` ({eval, batch_size,
seed, device, other_size}). Output: ``ablation`` (results/{experiment}/labels/ablation.json).
"""


from saeflow.core.runtime import rule_main


def body(smk) -> None:
    from saeflow.labels.ablation import ablate_categories, eval_set_from_h5
    from saeflow.core.io import read_json, write_json
    from saeflow.core.models import load_model
    from saeflow.core.runtime import resolve_device, seed_everything
    from saeflow.core.saes import load_sae

    cfg = smk.params.ablation
    seed_everything(cfg["seed"])
    device = resolve_device(cfg.get("device", "auto"))
    model = load_model(smk.params.model, smk.input.get("model"), device)
    sae = load_sae(smk.params.sae, smk.params.hook, smk.input.get("sae"), device)
    inputs = dict(smk.input.items())
    truth = read_json(inputs["membership"])["members"] if "membership" in inputs else None
    eval_set = eval_set_from_h5(smk.input.activations, cfg["eval"])
    result = ablate_categories(model, sae, eval_set, dict(zip(smk.params.categories, smk.input.classified)),
                               smk.input.descriptions, cfg["seed"], cfg["batch_size"], truth,
                               cfg.get("other_size"))
    write_json(smk.output.ablation, result, {"ablation": cfg, "hook": smk.params.hook})


rule_main(body, snakemake)  # noqa: F821
