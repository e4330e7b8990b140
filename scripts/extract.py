"""Rule extract: run the model over one prompt set and store hook activations in HDF5.

Inputs: the prompt set (JSONL), the model. Output: activations/{prompt_set}.h5.
"""

import logging

from saeflow.extract import extract_to_hdf5
from saeflow.core.models import load_model
from saeflow.core.prompts import load_prompt_set
from saeflow.core.runtime import resolve_device, rule_main


def body(snakemake):
    device = resolve_device(snakemake.params.device)
    cfg = snakemake.params.extraction
    # the prompts first: a bad prompt file fails before any weight is loaded
    records = load_prompt_set(snakemake.input.prompts)
    model = load_model(snakemake.params.model, snakemake.input.get("model"), device)
    summary = extract_to_hdf5(
        model,
        records,
        cfg["hooks"],
        snakemake.output.acts,
        positions=cfg["positions"],
        dtype=cfg["dtype"],
        batch_size=cfg["batch_size"],
        compression=cfg["compression"],
        source=snakemake.input.prompts,
        config={
            "extraction": cfg,
            "model": snakemake.params.model,
            "prompts": snakemake.input.prompts,
        },
    )
    logging.getLogger("saeflow").info("extracted %s", summary)


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
