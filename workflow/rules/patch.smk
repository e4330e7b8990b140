# Patching: which layers, positions and SAE latents carry the clean/corrupted difference?
# Library: saeflow/patch/resid.py (residual patching),
# saeflow/patch/attribution.py (AtP), saeflow/patch/faithfulness.py (exact check, faithfulness),
# saeflow/patch/summary.py (summary.json, toy-world check), saeflow/patch/plots.py (figures).
# Expects config["patch"] (keys and defaults: saeflow.patch.resid.PatchConfig; pairs, truth and
# descriptions are paths), config["model"], config["sae"] with "hooks" (SAE hook names, e.g.
# blocks.0.hook_resid_post) and config["experiment"] for the named figure targets.


rule patch_resid:
    input:
        unpack(model_input),
        pairs=config["patch"]["pairs"],
    output:
        resid="results/{experiment}/patch/resid.h5",
    params:
        patch=config["patch"],
        model=config["model"],
    log:
        "results/{experiment}/logs/patch_resid.log",
    resources:
        gpu=1,
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/patch_resid.py"


rule patch_atp:
    input:
        unpack(model_input),
        pairs=config["patch"]["pairs"],
        saes=sae_dirs,
    output:
        atp="results/{experiment}/patch/atp.h5",
    params:
        patch=config["patch"],
        model=config["model"],
        sae=config["sae"],
        hooks=config["sae"]["hooks"],
    log:
        "results/{experiment}/logs/patch_atp.log",
    resources:
        gpu=1,
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/patch_atp.py"


rule patch_verify:
    input:
        unpack(model_input),
        pairs=config["patch"]["pairs"],
        saes=sae_dirs,
        atp="results/{experiment}/patch/atp.h5",
        descriptions=lambda wc: config["patch"].get("descriptions") or [],
    output:
        verify="results/{experiment}/patch/verify.json",
        faithfulness="results/{experiment}/patch/faithfulness.json",
        top_latents="results/{experiment}/patch/top_latents.json",
    params:
        patch=config["patch"],
        model=config["model"],
        sae=config["sae"],
        hooks=config["sae"]["hooks"],
    log:
        "results/{experiment}/logs/patch_verify.log",
    resources:
        gpu=1,
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/patch_verify.py"


rule patch_summary:
    input:
        resid="results/{experiment}/patch/resid.h5",
        atp="results/{experiment}/patch/atp.h5",
        verify="results/{experiment}/patch/verify.json",
        faithfulness="results/{experiment}/patch/faithfulness.json",
        truth=lambda wc: config["patch"].get("truth") or [],
    output:
        summary="results/{experiment}/patch/summary.json",
    params:
        patch=config["patch"],
    log:
        "results/{experiment}/logs/patch_summary.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/patch_summary.py"


rule plot_resid_patching:
    input:
        resid="results/{experiment}/patch/resid.h5",
    output:
        png=report("results/{experiment}/figures/resid_patching.png",
                   category="Patching", caption="../report/resid_patching.rst", labels={"figure": "residual patching"}),
    log:
        "results/{experiment}/logs/plot_resid_patching.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_resid_patching.py"


rule plot_top_latents:
    input:
        verify="results/{experiment}/patch/verify.json",
    output:
        png=report("results/{experiment}/figures/top_latents.png",
                   category="Patching", caption="../report/top_latents.rst", labels={"figure": "top latents: AtP vs exact"}),
    log:
        "results/{experiment}/logs/plot_top_latents.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_top_latents.py"


rule plot_faithfulness:
    input:
        faithfulness="results/{experiment}/patch/faithfulness.json",
    output:
        png=report("results/{experiment}/figures/faithfulness.png",
                   category="Patching", caption="../report/faithfulness.rst", labels={"figure": "faithfulness"}),
    log:
        "results/{experiment}/logs/plot_faithfulness.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_faithfulness.py"


rule plot_latent_activations:
    input:
        top_latents="results/{experiment}/patch/top_latents.json",
    output:
        png=report("results/{experiment}/figures/latent_activations.png",
                   category="Patching", caption="../report/latent_activations.rst", labels={"figure": "top latent activations"}),
    log:
        "results/{experiment}/logs/plot_latent_activations.log",
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_latent_activations.py"


rule fig_resid_patching:
    input:
        f"results/{EXP}/figures/resid_patching.png",


rule fig_top_latents:
    input:
        f"results/{EXP}/figures/top_latents.png",


rule fig_faithfulness:
    input:
        f"results/{EXP}/figures/faithfulness.png",


rule fig_latent_activations:
    input:
        f"results/{EXP}/figures/latent_activations.png",
