"""Latent dashboards (named target ``dashboards``, workflow/rules/dashboards.smk): for the
latents a study cares about, the contexts where each fires, its activation histogram and the
logits of its decoder direction, written as static HTML pages with their data as JSON beside
them. Named like delphi's ``latents/``, for what it holds.

* ``contexts`` -- top, quantile and non-activating contexts of latents, from the CSR codes
  (the contract auto-interpretation reads too: :func:`contexts.latent_contexts`);
* ``selection`` -- which latents get a page, and why (rule dashboard_latents);
* ``logits`` -- the decoder logit table (W_dec @ W_U) and the activation histogram;
* ``pages`` -- the HTML of a latent's page, an SAE's index and the front page;
* ``links`` -- where a latent's page lives (the probe summary and circuit link to it);
* ``stage`` -- rules dashboard_pages and dashboard_index.
"""
