"""The prepared lent-GPU session (deploy/gpu): what its commands import is on the device or in its wheels."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "gpu"
# what session.sh runs: both train commands, the U-Net and FFN benchmarks (which import these)
SESSION_IMPORTS = ("connectome.cli.main", "connectome.cli.train", "connectome.affinity.training",
                   "connectome.ffn.training", "connectome.ffn.canvas", "connectome.models", "connectome.synth")
# imported only where installed, behind a guard: left out of the wheels (the rehearsal ran without them)
OPTIONAL = {"dill": "torch.utils._import_utils.import_dill checks find_spec first",
            "zstandard": "fsspec.compression registers zstd inside try/except ImportError"}


def names(path: Path) -> set[str]:
    """Normalised distribution names of a list file (one per line, `name==version` or `name`, # comments)."""
    out = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            out.add(re.sub(r"[-_.]+", "-", re.split(r"[=<>!~ ]", line)[0]).lower())
    return out


def test_the_session_imports_nothing_the_device_and_its_wheels_lack():
    code = ("import sys, json, importlib.metadata as md\n"
            f"for m in {SESSION_IMPORTS!r}: __import__(m)\n"
            "pd = md.packages_distributions()\n"
            "print(json.dumps(sorted({d for m in list(sys.modules) for d in pd.get(m.split('.')[0], [])})))")
    import json

    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout)
    available = (names(DEPLOY / "device-packages.txt") | names(DEPLOY / "requirements-device.txt") | {"connectome"}
                 | set(OPTIONAL))
    missing = sorted(d for d in loaded if re.sub(r"[-_.]+", "-", d).lower() not in available)
    assert missing == [], f"add to deploy/gpu/requirements-device.txt: {missing}"


def test_the_session_scripts_parse():
    for script in ("prepare.sh", "session.sh"):
        subprocess.run(["bash", "-n", str(DEPLOY / script)], check=True)
