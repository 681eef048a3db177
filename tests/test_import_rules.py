"""House rule (DESIGN.md §5): `mmrlhf/models`, `mmrlhf/algorithms` and `mmrlhf/types.py` import no
`ray`, `deepspeed` or `torch.distributed`.

Two checks, because `import torch` itself loads `torch.distributed` (so `sys.modules` cannot tell
who imported it): the source files' import statements are read with `ast` for all three
modules, and a fresh interpreter importing the packages must not end up with `ray` or
`deepspeed` loaded, even transitively.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mmrlhf"
RULED = [ROOT / "models", ROOT / "algorithms", ROOT / "types.py"]
FORBIDDEN = ("ray", "deepspeed", "torch.distributed")


def _forbidden(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in FORBIDDEN)


def _imports(path: Path):
    """(line, imported module) for every import statement of a source file."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            # `from torch import distributed` imports torch.distributed too
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)


def _ruled_files():
    for target in RULED:
        yield from sorted(target.rglob("*.py")) if target.is_dir() else [target] if target.exists() else []


def test_ruled_sources_have_no_ray_deepspeed_or_torch_distributed_imports():
    files = list(_ruled_files())
    assert any(f.parent.name == "models" for f in files)
    bad = [f"{f.relative_to(ROOT.parent)}:{line} imports {module}"
           for f in files for line, module in _imports(f) if _forbidden(module)]
    assert not bad, "\n".join(bad)


def test_importing_ruled_packages_loads_no_ray_or_deepspeed():
    modules = [f"mmrlhf.{p.stem}" if p.suffix else f"mmrlhf.{p.name}" for p in RULED if p.exists()]
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'deepspeed'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
