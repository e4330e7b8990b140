# saeflow: model + SAEs + prompt sets -> extraction -> SAE codes -> labels, probes, patching.
# Logic lives in the `saeflow` package; rules name one step each and call thin scripts/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/toy.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/encode.smk"


rule all:
    input:
        all_targets(),
    default_target: True
