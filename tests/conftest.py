"""Test isolation: nothing reaches the network or leaks outside a temporary folder.

The environment is set before any test module imports huggingface_hub / gradio, which read it at import time.
"""

import os
import tempfile
from pathlib import Path

_ROOT = Path(tempfile.mkdtemp(prefix="ghibligan-tests-"))
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HOME": str(_ROOT / "hf_home"),
    "GRADIO_TEMP_DIR": str(_ROOT / "gradio"),
    "TMPDIR": str(_ROOT / "tmp"),
    "MPLCONFIGDIR": str(_ROOT / "mpl"),
}.items():
    os.environ[_name] = _value
    if _name.endswith(("HOME", "DIR")):
        Path(_value).mkdir(parents=True, exist_ok=True)
tempfile.tempdir = None  # forget the cached temp dir so TMPDIR applies

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
