"""``tether bundle build-runtime``: a runtime bundle (kind ``runtime``) of this Tether's own
package, for a node's self-update (docs/operations.md "Upgrading"; node/slots.py).

The payload (``app.tar.gz``) holds ``tether/``, the importable package (every subpackage
of the installed or source tree, without tests or bytecode, plus an empty
``tether/__init__.py`` so the slot's copy wins over the installed one as a whole), and a
``tether-app.toml`` whose ``argv`` only names the entry module: the supervisor starts
``python -P -m tether.cli.main node run`` with ``PYTHONPATH`` set to the slot, on the same
interpreter and venv (a runtime bundle carries Tether's code, not its dependencies).

``--runtime-version`` rewrites ``tether/common/__init__.py``'s ``__version__`` (what the
candidate reports, and what the supervisor checks it runs); ``--broken crash|hang`` makes
a runtime that raises at start, or one that never attaches, to rehearse the rollback.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tether.common import __version__
from tether.protocol.bundle import Manifest

from .client import CliError

APP_TOML = """\
# A Tether runtime bundle (docs/operations.md "Upgrading"). The supervisor runs
# `python -P -m tether.cli.main node run --supervised ...` with PYTHONPATH=<slot>;
# argv only names the entry module.
argv = ["tether/cli/main.py", "node", "run"]
restart = "always"
"""
BROKEN = {
    "crash": 'raise RuntimeError("this runtime bundle is broken on purpose '
             '(build-runtime --broken crash)")\n',
    "hang": "import time as _t\nwhile True:  # never attaches (build-runtime --broken hang)\n"
            "    _t.sleep(3600)\n",
}
_VERSION_LINE = re.compile(r'^__version__\s*=\s*"[^"\n]*"\s*$', re.M)
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")


def package_root() -> Path:
    """The directory whose subdirectories are tether's subpackages (source or installed)."""
    import tether.node

    return Path(tether.node.__file__).resolve().parent.parent


def runtime_tree(out: Path, *, runtime_version: str | None = None, broken: str | None = None,
                 source: Path | None = None) -> Path:
    """Lay out the payload of a runtime bundle in the empty directory ``out``."""
    root = source or package_root()
    pkg = out / "tether"
    pkg.mkdir(parents=True)
    for sub in sorted(root.iterdir()):
        if sub.is_dir() and sub.name != "tests" and (sub / "__init__.py").is_file():
            shutil.copytree(sub, pkg / sub.name, ignore=_IGNORE)
    (pkg / "__init__.py").write_text("")
    if runtime_version is not None:
        init = pkg / "common" / "__init__.py"
        text, n = _VERSION_LINE.subn(f'__version__ = "{runtime_version}"', init.read_text())
        if n != 1:
            raise CliError(f"{init} has no __version__ line to rewrite")
        init.write_text(text)
    if broken is not None:
        main = pkg / "node" / "main.py"
        main.write_text(main.read_text() + "\n" + BROKEN[broken])  # after __future__
    (out / "tether-app.toml").write_text(APP_TOML)
    return out


def build_runtime_bundle(out: Path, *, name: str, version: int, key: Any,
                         runtime_version: str | None = None, broken: str | None = None,
                         min_runner_version: str = __version__,
                         source: Path | None = None) -> Manifest:
    """Build and sign the runtime bundle at ``out`` (cli/bundle.py ``build``, kind
    ``runtime``); returns its manifest."""
    from .bundle import build

    with tempfile.TemporaryDirectory(prefix="tether-runtime-") as tmp:
        tree = runtime_tree(Path(tmp) / "app", runtime_version=runtime_version,
                            broken=broken, source=source)
        return build(tree, name=name, version=version, key=key, out=out, kind="runtime",
                     min_runner_version=min_runner_version)


def add_build_runtime_parser(verbs: Any) -> None:
    p = verbs.add_parser("build-runtime", help="a runtime bundle of this Tether's package "
                                               "(a node's self-update)")
    p.add_argument("--name", default="tether-runtime", help="default tether-runtime")
    p.add_argument("--version", type=int, required=True,
                   help="the bundle version: higher than every earlier one of NAME")
    p.add_argument("--key", type=Path, required=True, help="the publisher's private key")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="the bundle file to write (replaced atomically)")
    p.add_argument("--runtime-version", help="rewrite the package's __version__ to this")
    p.add_argument("--broken", choices=sorted(BROKEN),
                   help="rehearse a rollback: a runtime that crashes at start, or hangs")
    p.add_argument("--json", action="store_true", help="print JSON")


def build_runtime_command(args: argparse.Namespace) -> int:
    import json

    from .bundle import load_private_key

    m = build_runtime_bundle(args.out, name=args.name, version=args.version,
                             key=load_private_key(args.key),
                             runtime_version=args.runtime_version, broken=args.broken)
    summary = {"file": str(args.out), "name": m.name, "version": m.version, "kind": m.kind,
               "files": len(m.files), "size": m.size}
    print(json.dumps(summary) if args.json else
          f"built {args.out}: runtime bundle {m.name} v{m.version}, {len(m.files)} files, "
          f"{m.size} bytes")
    return 0
