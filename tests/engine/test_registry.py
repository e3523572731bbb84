"""Stage lookup imports only the domain that declares the stage; an unknown name still lists them all."""

import subprocess
import sys


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_looking_up_one_stage_imports_only_its_domain():
    out = _fresh("import sys\n"
                 "from connectome.engine.registry import stage_class\n"
                 "print(stage_class('align_match').__module__)\n"
                 "print(sorted(m for m in ('torch', 'connectome.affinity.stages', 'connectome.ffn.stages') "
                 "if m in sys.modules))")
    assert out.splitlines() == ["connectome.alignment.stages", "[]"]


def test_an_unknown_stage_names_every_known_one():
    out = _fresh("from connectome.core.errors import UserError\n"
                 "from connectome.engine.registry import stage_class\n"
                 "try:\n    stage_class('nonesuch')\nexcept UserError as e:\n    print(e)")
    assert out.startswith("unknown stage 'nonesuch'; known stages: ")
    assert all(name in out for name in ("affinities", "align_match", "ffn", "clefts", "meshes", "tissue"))
