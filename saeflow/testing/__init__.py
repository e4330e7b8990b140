"""Helpers for saeflow's tests, benchmarks and docs: builders, a workflow copied and run
elsewhere, result-tree comparison, an offline Hugging Face hub and study, the docs' numbers.
Nothing on a study's own path imports this package."""
