"""The real-model path fails at once, with one clear line, when the hub cannot be reached."""

import subprocess
import sys
import time

import pytest

from saeflow.core.hub import hub_reachable

SCRIPT = """
from saeflow.core.errors import InputError
from saeflow.core.models import load_model
from saeflow.core.saes import load_sae
try:
    {call}
except InputError as err:
    print(err)
    raise SystemExit(3)
"""


def _run(call, tmp_path):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"),
           "PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(call=call)], env=env,
                          capture_output=True, text=True, timeout=120)
    return proc, time.perf_counter() - start


def test_unreachable_endpoint_is_detected():
    assert not hub_reachable("http://127.0.0.1:9", timeout=1.0)


@pytest.mark.parametrize("call, field", [
    ("load_model({'source': 'pretrained', 'name': 'gemma-2-2b', 'dtype': 'float32'}, None)",
     "model.name"),
    ("load_sae({'source': 'pretrained', 'release': 'gemma-scope-2b-pt-res-canonical', "
     "'ids': {'blocks.12.hook_resid_post': 'layer_12/width_65k/canonical'}}, "
     "'blocks.12.hook_resid_post', None)", "sae.ids.blocks.12.hook_resid_post"),
])
def test_pretrained_loading_fails_at_once_when_hub_is_unreachable(call, field, tmp_path):
    proc, _ = _run(call, tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]
    line = proc.stdout.strip()
    assert "\n" not in line and field in line and "unreachable" in line
