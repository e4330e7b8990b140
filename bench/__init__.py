"""saeflow's benchmarks: each figure a ratio measured in one process against a baseline.

``python -m bench`` runs all of them (``make bench``), ``python -m bench NAME ...`` some,
``--smoke`` a tiny quick mode (the test suite's). Each writes ``results/bench/<name>.json``.
"""

# Run order: cheap first; module name = benchmark name = JSON file name.
BENCHMARKS = ("extraction", "storage", "encoding", "attribution", "edges", "patching", "workflow",
              "memory", "training", "scale", "dashboards")
