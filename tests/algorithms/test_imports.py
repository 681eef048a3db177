import ast
from pathlib import Path

import mmrlhf.algorithms

FORBIDDEN = ("ray", "deepspeed", "torch.distributed")


def imported_modules(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_algorithms_import_no_ray_deepspeed_or_distributed():
    package = Path(mmrlhf.algorithms.__file__).parent
    offenders = [
        f"{path.name}: {name}"
        for path in sorted(package.glob("*.py"))
        for name in imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    ]
    assert not offenders, f"algorithms/ must stay pure torch, found imports: {offenders}"
