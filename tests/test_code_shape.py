"""Code shape: no function in the library is longer than a screen."""

import ast
from pathlib import Path

import ablationlab

MAX_LINES = 80


def _long_functions(root: Path) -> dict[str, int]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    out[f"{path.relative_to(root)}:{node.name}"] = lines
    return out


def test_no_function_over_80_lines():
    root = Path(ablationlab.__file__).parent
    long = _long_functions(root)
    assert long == {}, f"functions over {MAX_LINES} lines: {long}"


def test_the_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    assert _long_functions(tmp_path) == {"m.py:long": MAX_LINES + 1}
