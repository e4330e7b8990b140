"""Rule patch_verify: exact patching of the top AtP latents, false negatives, faithfulness and
completeness curves, and the top latents' activations.
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.patch.attribution import load_model_and_saes
    from saeflow.formats.descriptions import descriptions_by_hook
    from saeflow.patch.faithfulness import verify_stage
    from saeflow.patch.resid import PatchConfig, load_pairs, optional_input
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
    descriptions = descriptions_by_hook(optional_input(snakemake.input.descriptions))
    verify_stage(
        model,
        saes,
        batches,
        snakemake.input.atp,
        cfg,
        descriptions,
        snakemake.output.verify,
        snakemake.output.faithfulness,
        snakemake.output.top_latents,
        {
            "patch": snakemake.params.patch,
            "model": snakemake.params.model,
            "sae": snakemake.params.sae,
        },
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
