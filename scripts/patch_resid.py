"""Rule patch_resid: clean -> corrupted residual-stream patching over every layer x position."""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.core.models import load_model
    from saeflow.patch.resid import PatchConfig, load_pairs, run_resid_patching, write_resid
    from saeflow.core.runtime import resolve_device, seed_everything

    cfg = PatchConfig.from_dict(snakemake.params.patch)
    seed_everything(cfg.seed)
    model = load_model(
        snakemake.params.model, snakemake.input.get("model"), resolve_device(cfg.device)
    )
    batches = load_pairs(snakemake.input.pairs, model.tokenizer)
    write_resid(
        snakemake.output.resid,
        run_resid_patching(model, batches, cfg),
        {"patch": snakemake.params.patch, "model": snakemake.params.model},
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
