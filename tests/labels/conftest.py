"""Fixtures of the labelling tests."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def descriptions(tmp_path):
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps({"records": [
        {"feature_id": f"toy-{i}", "feature_index": i, "description": f"text of feature {i}"}
        for i in range(20)]}))
    return path
