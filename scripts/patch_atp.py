"""Rule patch_atp: SAE-latent attribution patching, with and without the SAE error term."""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.patch.attribution import atp_stage, load_model_and_saes
    from saeflow.patch.resid import PatchConfig, load_pairs
    from saeflow.core.runtime import resolve_device, seed_everything

    cfg = PatchConfig.from_dict(snakemake.params.patch)
    seed_everything(cfg.seed)
    model, saes = load_model_and_saes(
        snakemake.params.model,
        snakemake.input.get("model"),
        snakemake.params.sae,
        snakemake.params.hooks,
        list(snakemake.input.saes) or [None] * len(snakemake.params.hooks),
        resolve_device(cfg.device),
    )
    batches = load_pairs(snakemake.input.pairs, model.tokenizer)
    atp_stage(
        model,
        saes,
        batches,
        cfg,
        snakemake.output.atp,
        {
            "patch": snakemake.params.patch,
            "model": snakemake.params.model,
            "sae": snakemake.params.sae,
        },
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
