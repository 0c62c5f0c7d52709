"""The package's shape: one-way flow, no import circles, modules of a few hundred lines,
and a plan layer that never touches the machine."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "testbed"
MACHINE = ("docker", "mininet", "testbed.runtime", "testbed.network", "testbed.clients", "testbed.run",
           "testbed.flows", "testbed.wire", "testbed.delayer", "pyroute2", "netfilterqueue")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Module -> the testbed modules it imports, at module level or inside functions."""
    mods = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("testbed"):
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("testbed")}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def test_no_import_circle():
    graph = imports()
    # a package's __init__ re-exporting its own submodules is not a circle between rooms
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, f"import circle: {' -> '.join(path + [d])}"
            if d not in state:
                visit(d, path + [d])
        state[m] = 2
    for m in graph:
        if m not in state:
            visit(m, [m])


def test_model_and_plan_import_nothing_that_touches_the_machine():
    code = ("import sys, testbed.model, testbed.plan; "
            f"print(','.join(m for m in sys.modules if m.startswith({MACHINE!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"model/plan pull in: {out}"


def test_analysis_reads_only_results():
    """Reports and comparisons work from a results directory on any machine: the analysis
    imports nothing that acts on the machine, and nothing of the run or the plan."""
    code = ("import sys, testbed.analysis.pages, testbed.analysis.compare; "
            f"print(','.join(m for m in sys.modules if m.startswith({MACHINE + ('testbed.plan', 'testbed.model')!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"analysis pulls in: {out}"


def test_modules_stay_a_few_hundred_lines():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long


def test_the_project_stands_alone():
    """No tracked file points outside the repository to notes it does not ship."""
    root = PACKAGE.parent
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    outside = ("../shared", "PLATFORM.md", "REFERENCE.md", "STYLE.md")
    found = [f for f in files if (root / f).is_file() and f != "tests/test_structure.py"
             and any(o in (root / f).read_text(errors="replace") for o in outside)]
    assert not found, found
