"""Rule patch_atp: SAE-latent attribution patching, with and without the SAE error term."""


from saeflow.core.runtime import rule_main


def body(smk) -> None:
    from saeflow.patch.attribution import atp_stage, load_model_and_saes
    from saeflow.patch.resid import PatchConfig, load_pairs
    from saeflow.core.runtime import resolve_device, seed_everything

    cfg = PatchConfig.from_dict(smk.params.patch)
    seed_everything(cfg.seed)
    model, saes = load_model_and_saes(smk.params.model, smk.input.get("model"),
                                      smk.params.sae, smk.params.hooks,
                                      list(smk.input.saes) or [None] * len(smk.params.hooks),
                                      resolve_device(cfg.device))
    batches = load_pairs(smk.input.pairs, model.tokenizer)
    atp_stage(model, saes, batches, cfg, smk.output.atp,
              {"patch": smk.params.patch, "model": smk.params.model, "sae": smk.params.sae})


rule_main(body, snakemake)  # noqa: F821
