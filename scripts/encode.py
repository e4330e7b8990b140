"""Rule encode: encode every SAE hook's activations into sparse codes plus feature statistics.

Inputs: activations/{prompt_set}.h5, the SAEs. Output: codes/{prompt_set}.h5.
"""

import functools
import logging

from saeflow.encode import encode_to_hdf5
from saeflow.core.runtime import resolve_device, rule_main
from saeflow.core.saes import load_sae


def body(snakemake):
    device = resolve_device(snakemake.params.device)
    hooks = snakemake.params.hooks
    dirs = list(snakemake.input.saes) or [None] * len(hooks)
    loaders = {
        hook: functools.partial(load_sae, snakemake.params.sae, hook, sae_dir, device)
        for hook, sae_dir in zip(hooks, dirs, strict=True)
    }
    summary = encode_to_hdf5(
        snakemake.input.acts,
        snakemake.output.codes,
        loaders,
        batch_rows=snakemake.params.encoding["batch_rows"],
        device=device,
        config={"sae": snakemake.params.sae, "encoding": snakemake.params.encoding},
    )
    logging.getLogger("saeflow").info("encoded %s", summary)


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
