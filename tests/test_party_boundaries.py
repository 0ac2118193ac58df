"""Invariant 6: the code mirrors the parties.

bank_node and partner_node never import each other, the gateway never imports partner_node, and
the shared package imports none of them except its composition root, cobrand/cli.py (and the
command modules it mounts, which wire the parties' commands together).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPOSITION_ROOT = {
    Path("cobrand/cli.py"),
    Path("cobrand/commands/demo.py"),
    Path("cobrand/commands/align.py"),
    Path("cobrand/commands/train.py"),
}
FORBIDDEN = {
    "bank_node": {"partner_node", "gateway"},
    "partner_node": {"bank_node", "gateway"},
    "gateway": {"partner_node"},
    "cobrand": {"bank_node", "partner_node", "gateway"},
}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_party_package_imports_a_package_it_must_not() -> None:
    violations = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative in COMPOSITION_ROOT or relative.parts[:2] == ("cobrand", "v1"):
                continue
            for name in _imported_top_levels(path) & forbidden:
                violations.append(f"{relative} imports {name}")
    assert violations == []


def test_the_boundary_check_sees_a_violation(tmp_path: Path) -> None:
    offender = tmp_path / "m.py"
    offender.write_text("from partner_node.embedding import x\nimport bank_node.store\n")
    assert _imported_top_levels(offender) == {"partner_node", "bank_node"}
