"""Rule patch_verify: exact patching of the top AtP latents, false negatives, faithfulness and
completeness curves, and the top latents' activations."""


from saeflow.core.runtime import rule_main


def body(smk) -> None:
    from saeflow.patch.attribution import load_model_and_saes
    from saeflow.formats.descriptions import descriptions_by_hook
    from saeflow.patch.faithfulness import verify_stage
    from saeflow.patch.resid import PatchConfig, load_pairs, optional_input
    from saeflow.core.runtime import resolve_device, seed_everything

    cfg = PatchConfig.from_dict(smk.params.patch)
    seed_everything(cfg.seed)
    model, saes = load_model_and_saes(smk.params.model, smk.input.get("model"),
                                      smk.params.sae, smk.params.hooks,
                                      list(smk.input.saes) or [None] * len(smk.params.hooks),
                                      resolve_device(cfg.device))
    batches = load_pairs(smk.input.pairs, model.tokenizer)
    descriptions = descriptions_by_hook(optional_input(smk.input.descriptions))
    verify_stage(model, saes, batches, smk.input.atp, cfg, descriptions, smk.output.verify,
                 smk.output.faithfulness, smk.output.top_latents,
                 {"patch": smk.params.patch, "model": smk.params.model, "sae": smk.params.sae})


rule_main(body, snakemake)  # noqa: F821
