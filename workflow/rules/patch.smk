# Patching: which layers, positions and SAE latents carry the clean/corrupted difference?
# Rules: patch_resid (resid.h5), patch_estimate (one job per node estimator of
# patch.estimators: {estimator}.h5, atp.h5 always), patch_exact (exact.h5), patch_verify,
# patch_circuit, patch_summary (summary.json) and the plot_* figures.
# Library: saeflow/patch/
#   pairs: PatchConfig, PairBatch, load_pairs, the metric (logit_diff), right-alignment
#   bootstrap: the cluster bootstrap of every interval over pairs (group, template or pair)
#   resid: residual patching over layer x position (resid.h5)
#   splice: SAEs and transcoders spliced in (run_spliced, decoder_rows), PatchRun
#   resume: patched runs started at the patched site's layer
#   attribution: AtP, exact latent patching, atp.h5 (write_atp, read_atp)
#   estimators: the node-estimator registry and rule patch_estimate's stage
#   ig, graddrop, qkfix: integrated gradients, AtP* GradDrop, AtP* QK fix
#   exhaustive: every node patched exactly (exact.h5), the estimators' reference
#   gate: each estimator judged against exact.h5 on measures a wrong one fails (patch.gate)
#   faithfulness: AtP vs exact, faithfulness curves, top latents (patch_verify)
#   edges, edge_pruning, circuit: direct edges, edge pruning, circuit.json (patch_circuit)
#   summary: summary.json and the toy-world check; plots: figures
#   stages: the rules' entry points (scripts/patch_*.py make one call there)
# Config: config["patch"] (keys and defaults: workflow/schemas/config.schema.yaml, described in
# config/README.md; pairs, truth and descriptions are paths), config["model"], config["sae"].


rule patch_resid:
    input:
        unpack(get_model),
        pairs=get_patch_pairs,
    output:
        resid="results/{experiment}/patch/resid.h5",
    log:
        "results/{experiment}/logs/patch/patch_resid/{experiment}.log",
    benchmark:
        "results/{experiment}/benchmarks/patch/patch_resid/{experiment}.tsv"
    conda:
        "../../envs/saeflow.yaml"
    resources:
        gpu=1,
    params:
        patch=PATCH,
        model=config["model"],
    script:
        "../../scripts/patch_resid.py"


rule patch_estimate:
    input:
        unpack(get_model),
        pairs=get_patch_pairs,
        saes=get_sae_dirs,
    output:
        h5="results/{experiment}/patch/{estimator}.h5",
    log:
        "results/{experiment}/logs/patch/patch_estimate/{estimator}.log",
    benchmark:
        "results/{experiment}/benchmarks/patch/patch_estimate/{estimator}.tsv"
    wildcard_constraints:
        estimator=_alternatives(PATCH_ESTIMATORS),
    conda:
        "../../envs/saeflow.yaml"
    resources:
        gpu=1,
    params:
        patch=PATCH,
        model=config["model"],
        sae=config["sae"],
        hooks=SAE_HOOKS,
    script:
        "../../scripts/patch_estimate.py"


rule patch_verify:
    input:
        unpack(get_model),
        pairs=get_patch_pairs,
        saes=get_sae_dirs,
        atp=patch_estimate_file("atp"),
        descriptions=get_patch_descriptions,
    output:
        verify="results/{experiment}/patch/verify.json",
        faithfulness="results/{experiment}/patch/faithfulness.json",
        top_latents="results/{experiment}/patch/top_latents.json",
    log:
        "results/{experiment}/logs/patch/patch_verify/{experiment}.log",
    benchmark:
        "results/{experiment}/benchmarks/patch/patch_verify/{experiment}.tsv"
    conda:
        "../../envs/saeflow.yaml"
    resources:
        gpu=1,
    params:
        patch=PATCH,
        model=config["model"],
        sae=config["sae"],
        hooks=SAE_HOOKS,
    script:
        "../../scripts/patch_verify.py"


rule patch_exact:
    input:
        unpack(get_model),
        pairs=get_patch_pairs,
        saes=get_sae_dirs,
    output:
        exact="results/{experiment}/patch/exact.h5",
    log:
        "results/{experiment}/logs/patch/patch_exact/{experiment}.log",
    benchmark:
        "results/{experiment}/benchmarks/patch/patch_exact/{experiment}.tsv"
    conda:
        "../../envs/saeflow.yaml"
    resources:
        gpu=1,
    params:
        patch=PATCH,
        model=config["model"],
        sae=config["sae"],
        hooks=SAE_HOOKS,
    script:
        "../../scripts/patch_exact.py"


rule patch_circuit:
    input:
        unpack(get_model),
        pairs=get_patch_pairs,
        saes=get_sae_dirs,
        atp=patch_estimate_file("atp"),
        descriptions=get_patch_descriptions,
    output:
        circuit="results/{experiment}/patch/circuit.json",
    log:
        "results/{experiment}/logs/patch/patch_circuit/{experiment}.log",
    benchmark:
        "results/{experiment}/benchmarks/patch/patch_circuit/{experiment}.tsv"
    conda:
        "../../envs/saeflow.yaml"
    resources:
        gpu=1,
    params:
        patch=PATCH,
        model=config["model"],
        sae=config["sae"],
        hooks=SAE_HOOKS,
    script:
        "../../scripts/patch_circuit.py"


rule patch_summary:
    input:
        unpack(get_patch_estimates),
        resid=rules.patch_resid.output.resid,
        verify=rules.patch_verify.output.verify,
        faithfulness=rules.patch_verify.output.faithfulness,
        truth=get_patch_truth,
        exact=get_patch_exact,
        circuit=rules.patch_circuit.output.circuit,
    output:
        summary="results/{experiment}/patch/summary.json",
    log:
        "results/{experiment}/logs/patch/patch_summary/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    params:
        patch=PATCH,
    script:
        "../../scripts/patch_summary.py"


rule plot_resid_patching:
    input:
        resid=rules.patch_resid.output.resid,
    output:
        png=report(
            "results/{experiment}/figures/resid_patching.png",
            category="Patching",
            caption="../report/resid_patching.rst",
            labels={"figure": "resid_patching"},
        ),
    log:
        "results/{experiment}/logs/patch/plot_resid_patching/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_resid_patching.py"


rule plot_top_latents:
    input:
        verify=rules.patch_verify.output.verify,
    output:
        png=report(
            "results/{experiment}/figures/top_latents.png",
            category="Patching",
            caption="../report/top_latents.rst",
            labels={"figure": "top_latents"},
        ),
    log:
        "results/{experiment}/logs/patch/plot_top_latents/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_top_latents.py"


rule plot_faithfulness:
    input:
        faithfulness=rules.patch_verify.output.faithfulness,
    output:
        png=report(
            "results/{experiment}/figures/faithfulness.png",
            category="Patching",
            caption="../report/faithfulness.rst",
            labels={"figure": "faithfulness"},
        ),
    log:
        "results/{experiment}/logs/patch/plot_faithfulness/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_faithfulness.py"


rule plot_latent_activations:
    input:
        top_latents=rules.patch_verify.output.top_latents,
    output:
        png=report(
            "results/{experiment}/figures/latent_activations.png",
            category="Patching",
            caption="../report/latent_activations.rst",
            labels={"figure": "latent_activations"},
        ),
    log:
        "results/{experiment}/logs/patch/plot_latent_activations/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_latent_activations.py"


rule plot_circuit:
    input:
        circuit=rules.patch_circuit.output.circuit,
    output:
        png=report(
            "results/{experiment}/figures/circuit.png",
            category="Patching",
            caption="../report/circuit.rst",
            labels={"figure": "circuit"},
        ),
    log:
        "results/{experiment}/logs/patch/plot_circuit/{experiment}.log",
    localrule: True
    conda:
        "../../envs/saeflow.yaml"
    script:
        "../../scripts/plot_circuit.py"
