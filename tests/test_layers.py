"""Import-time guarantees that the import-linter contracts in ``pyproject.toml`` cannot state.

``settings.py`` is imported by every ``kedro`` command (``kedro --help`` included), so it
must stay light: no torch, no transformers. import-linter would count the lazy
``pipelines`` import inside a hook function as a dependency, so this is checked on a
fresh interpreter instead.
"""

from __future__ import annotations

import subprocess
import sys


def test_settings_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys\n"
        "import dqe_cir_pipeline.settings\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing settings pulled in: {out.stdout.strip()}"
