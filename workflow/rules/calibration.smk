# Calibration (named target `calibration`, not in `all`; any study, it reads no results): every
# p-value and interval saeflow reports, run by saeflow's own code on null or planted data
# with a known truth; the false-positive rate or coverage of each against its nominal level.
# Library: saeflow/calibration/ (probe, lpf, agreement, patch: the designs; __init__: the
# table). Config: config["calibration"].


rule calibrate:
    output:
        summary="results/{experiment}/calibration/summary.json",
        table="results/{experiment}/calibration/table.md",
    log:
        "results/{experiment}/logs/calibration/calibrate/{experiment}.log",
    conda:
        "../../envs/saeflow.yaml"
    params:
        calibration=config["calibration"],
    script:
        "../../scripts/calibrate.py"
