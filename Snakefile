# saeflow: model + SAEs + prompt sets -> extraction -> SAE codes -> labels, probes, patching.
# Logic lives in the `saeflow` package; rules name one step each and call thin scripts/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/toy.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/encode.smk"
include: "workflow/rules/labels.smk"
include: "workflow/rules/patch.smk"
include: "workflow/rules/probe.smk"


# Light steps run on the submit host, not as cluster jobs (see workflow/profiles/slurm).
localrules:
    describe,
    classify,
    agree,
    correction_study,
    correct,
    patch_summary,
    plot_confusion,
    plot_lpf,
    plot_resid_patching,
    plot_top_latents,
    plot_faithfulness,
    plot_latent_activations,
    probe_summary,
    plot_probe_accuracy,
    plot_probe_heatmap,
    plot_cohens_d,


rule all:
    input:
        all_targets(),
    default_target: True
