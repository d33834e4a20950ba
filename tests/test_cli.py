import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from mri_slice_transfer import __version__
from mri_slice_transfer.cli import COMMANDS, main


def test_version_flag(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert __version__ in capsys.readouterr().out


def test_info_json(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MRI_SLICE_TRANSFER_CACHE", str(tmp_path))
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mri_slice_transfer"] == __version__
    assert info["paths"]["cache_dir"] == str(tmp_path)
    assert info["packages"]["torch"] != "not installed"


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "mri_slice_transfer", "info"], capture_output=True, text=True, check=True
    ).stdout
    assert "weights" in out and "cache" in out


PACKAGE = Path(__file__).resolve().parents[1] / "mri_slice_transfer"


def test_building_the_parser_imports_no_heavy_package():
    # `mri-slice-transfer --help` and `info --help` stay fast: command modules import their work inside run()
    code = (
        "import sys; from mri_slice_transfer.cli import build_parser; build_parser(); "
        "print(sorted({'torch', 'monai', 'pandas', 'SimpleITK', 'nibabel', 'matplotlib'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_command_module_is_registered_and_complete():
    names = {p.stem for p in (PACKAGE / "commands").glob("*.py") if p.stem != "__init__"}
    assert {m.__name__.rsplit(".", 1)[-1] for m in COMMANDS.values()} == names
    for name, module in COMMANDS.items():
        assert module.__name__.endswith(name.replace("-", "_"))
        assert module.HELP and callable(module.add_arguments) and callable(module.run)


def test_library_modules_have_no_command_line_code():
    # argparse lives in cli.py and commands/ only
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.parent.name != "commands"
        and p.name != "cli.py"
        and re.search(r"^\s*(import|from) argparse\b", p.read_text(encoding="utf-8"), re.M)
    ]
    assert offenders == []


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """Package modules imported at module level (not inside functions or ``if TYPE_CHECKING``)."""
    out = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n in modules}
    return out


def test_no_import_cycle_between_modules():
    files = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}
    files = {m.removesuffix(".__init__"): p for m, p in files.items()}
    graph = {m: _top_level_imports(p, set(files)) for m, p in files.items()}
    state: dict[str, str] = {}

    def cycle_from(m: str, stack: list[str]) -> list[str] | None:
        state[m] = "open"
        for dep in sorted(graph[m]):
            if state.get(dep) == "open":
                return stack[stack.index(dep) :] + [dep] if dep in stack else [m, dep]
            if dep not in state and (found := cycle_from(dep, stack + [dep])):
                return found
        state[m] = "done"
        return None

    cycles = [c for m in sorted(graph) if m not in state and (c := cycle_from(m, [m]))]
    assert cycles == []
