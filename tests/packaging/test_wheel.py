"""Issue 11 item 10: a non-editable install ships every package.

The wheel is built from a copy of the source tree (the tree itself stays clean), installed
with ``--no-deps`` into a fresh venv that sees the project venv's dependencies but not its
editable ``tether``, and then every module of the wheel imports and every noun's ``--help``
runs from the installed ``tether`` script.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Runs inside the fresh venv: imports every module the wheel holds, from the wheel.
PROBE = """
import importlib, json, sys
venv = sys.argv[1]
failed, outside = {}, []
for name in json.loads(sys.argv[2]):
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        failed[name] = repr(exc)
        continue
    if not str(module.__file__).startswith(venv):
        outside.append(name)
from tether.cli.main import build_parser
nouns = [a for a in build_parser()._subparsers._group_actions[0].choices]
print(json.dumps({"failed": failed, "outside": outside, "nouns": nouns}))
"""


def source_packages() -> set[str]:
    """Every package directory of the source tree, as ``tether.<dir>[.<sub>...]``."""
    found = set()
    for init in ROOT.glob("*/**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0] not in ("tests", ".venv") and not rel.parts[0].startswith("."):
            found.add("tether." + ".".join(rel.parts))
    return found


def copy_sources(dest: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for rel in listed:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def test_the_wheel_ships_every_package_and_its_commands_run(tmp_path: Path) -> None:
    src = tmp_path / "src"
    copy_sources(src)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w",
                            str(tmp_path / "dist"), str(src)],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    # setup.py lists the static directories as data packages: setuptools has nothing to warn
    assert "absent from the `packages` configuration" not in built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("tether-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.rsplit("/", 1)[0].replace("/", ".") for n in names
               if n.endswith("/__init__.py")}
    assert source_packages() <= shipped, f"missing: {source_packages() - shipped}"
    assert "tether/protocol/py.typed" in names
    static = {str(p.relative_to(ROOT / "controller")) for p in
              (ROOT / "controller" / "web" / "static").rglob("*") if p.is_file()}
    assert {f"tether/controller/{rel}" for rel in static} <= set(names)  # the dashboard
    xterm = "tether/controller/web/static/vendor/xterm/"  # the web terminal, vendored
    assert {xterm + rel for rel in ("README.md", "xterm/lib/xterm.mjs", "xterm/css/xterm.css",
                                    "xterm/LICENSE", "xterm/package.json",
                                    "addon-fit/lib/addon-fit.mjs", "addon-fit/LICENSE",
                                    "addon-fit/package.json")} <= set(names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    python = venv / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python),
                                "install", "--no-deps", "--no-index", "-q", str(wheel)],
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    # The dependencies come from the project venv; a path added by a .pth file has its own
    # .pth files ignored, so the project's editable tether stays out of sight.
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    modules = sorted(n[:-3].replace("/", ".").removesuffix(".__init__") for n in names
                     if n.endswith(".py"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([str(python), "-c", PROBE, str(venv), json.dumps(modules)],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout)
    assert result["failed"] == {} and result["outside"] == []
    assert {"controller", "node", "sidecar", "diag", "nodes"} <= set(result["nouns"])
    for noun in result["nouns"]:
        helped = subprocess.run([str(venv / "bin" / "tether"), noun, "--help"],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path,
                                env=env)
        assert helped.returncode == 0 and "usage: tether" in helped.stdout, \
            (noun, helped.stderr)
