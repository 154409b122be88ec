"""Node-local policy guardrails: which command kinds and executables may run, and limits.

The policy file (``<state-dir>/policy.json`` or ``tether node run --policy FILE``) is read
once at start; a file that does not validate stops the runtime with a message naming the
field. :meth:`Policy.check` returns the rule that refuses a command, or None; it reads the
file system (to resolve executables and directories) but nothing else.

The policy judges what will actually run (:meth:`Policy.plan_exec`), not what was asked
for, and the exec runner runs exactly the plan it judged:

1. ``argv[0]`` is resolved to the absolute path ``execve`` will run: a bare name through
   ``PATH`` (the runtime's own ``PATH``, or the command's ``PATH`` where the policy lets the
   command set one), a path with a slash against the working directory the process gets.
   Directory symlinks and ``..`` are resolved; the file name is kept, since a multi-call
   binary (busybox) picks its applet by the name it is run under.
   When the policy restricts executables, the file judged (every symlink resolved) is
   the one ``execve`` runs (:attr:`ExecPlan.executable`), so a symlink re-pointed between
   the judgement and the spawn changes nothing.
2. With ``exec_allow`` set, that path must be an entry's path: a bare entry resolves
   through the runtime's own ``PATH`` (never the command's), an absolute entry is taken as
   is. Two paths match when they are equal, or name the same file under the same file name
   (``/bin/echo`` and ``/usr/bin/echo``). The process is then started with ``argv[0]``
   replaced by the resolved path, so no later ``PATH`` lookup can pick another file.
3. With ``exec_allow`` set, the command's ``env`` may not set a variable in
   :data:`GUARDED_ENV` (loader, interpreter, shell start-up and helper-program variables, and
   ``PATH``) unless it matches a pattern in ``exec_env_allow``. Without ``exec_allow`` the
   policy admits any program, so the guards would protect nothing and do not apply.
4. With ``exec_cwd_allow`` set, the working directory (symlinks and ``..`` resolved) must be
   an entry or beneath one; a command that sends none starts in the first entry.
5. Every exec runs under a timeout when the policy has ``max_timeout_s``: the one sent (at
   most the max), else ``default_timeout_s``, else the max. A ``timeout_s`` that is not a
   finite positive number is refused.
6. A ``file.send`` reads only a file inside the node's workspace (symlinks and ``..``
   resolved), or beneath a ``file_read_allow`` entry (:meth:`Policy.file_source`); it is a
   kind like any other for ``deny_kinds`` / ``allow_kinds``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from tether.protocol.errors import TetherError
from tether.protocol.frames import CONTROL_KINDS

# Variables a command may not set under exec_allow unless exec_env_allow names them: each
# makes an allowed program load or run code, or read start-up files, chosen by the sender.
GUARDED_ENV_NAMES = frozenset({
    "PATH", "IFS", "ENV", "BASH_ENV", "CDPATH", "SHELLOPTS", "BASHOPTS", "PS4",
    "PROMPT_COMMAND", "GLOBIGNORE", "ZDOTDIR", "SHELL", "HOME", "XDG_CONFIG_HOME",
    "XDG_CONFIG_DIRS", "GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH", "NLSPATH", "HOSTALIASES",
    "RESOLV_HOST_CONF", "RES_OPTIONS", "OPENSSL_CONF", "OPENSSL_ENGINES", "OPENSSL_MODULES",
    "CLASSPATH", "TCLLIBPATH", "PAGER", "MANPAGER", "SYSTEMD_PAGER", "EDITOR", "VISUAL",
    "LESSOPEN", "LESSCLOSE", "BROWSER",
})
GUARDED_ENV_PREFIXES = (
    "LD_", "DYLD_", "BASH_FUNC_", "PYTHON", "PERL", "RUBY", "GEM_", "NODE_", "LUA_",
    "JAVA_", "_JAVA_", "JDK_", "GIT_",
)
GUARDED_ENV = (*sorted(GUARDED_ENV_NAMES), *(p + "*" for p in GUARDED_ENV_PREFIXES))


def guarded(name: str) -> bool:
    """Whether ``name`` is one of :data:`GUARDED_ENV` (case-sensitive, as the loader is)."""
    return name in GUARDED_ENV_NAMES or name.startswith(GUARDED_ENV_PREFIXES)


class PolicyError(TetherError):
    default_code = "invalid_request"


class Refused(TetherError):
    """The policy refuses a command; ``message`` is the rule (``rejected by policy: <rule>``
    on the wire)."""

    default_code = "invalid_request"


@dataclass(frozen=True, slots=True)
class ExecPlan:
    """What an ``exec`` command will run, as judged: argv (``argv[0]`` resolved when the
    policy restricts executables), the variables added to the runtime's environment, the
    working directory (resolved when the policy restricts it) and the timeout."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None
    timeout_s: float | None
    executable: str | None = None  # the file judged, all symlinks resolved (rule 1)


def _runtime_path() -> str:
    """The runtime's own PATH: what bare names in exec_allow resolve through."""
    return os.environ.get("PATH") or os.defpath


def _locate(program: str, *, search_path: str, cwd: str) -> str | None:
    """The absolute path ``execve`` runs for ``program`` (rule 1), or None if none is found.
    Relative PATH entries and relative paths resolve against ``cwd``, as in the child."""
    if "/" in program:
        path = os.path.join(cwd, program)
    else:
        found = shutil.which(program, path=search_path)
        if found is None:
            return None
        path = os.path.join(cwd, found)
    head, name = os.path.split(path)
    if not name or name in (".", ".."):
        return None
    return os.path.join(os.path.realpath(head), name)


def _same_program(a: str, b: str) -> bool:
    return a == b or (os.path.basename(a) == os.path.basename(b)
                      and os.path.realpath(a) == os.path.realpath(b))


def _within(path: str, roots: tuple[str, ...]) -> bool:
    for root in roots:
        real = os.path.realpath(root)
        if path == real or path.startswith(real.rstrip("/") + "/"):
            return True
    return False


def _no_nul(*values: str) -> bool:
    return not any("\0" in v for v in values)


DEFAULT_TERM = "xterm-256color"


def default_shell() -> str:
    """What a ``shell`` without argv runs: the runtime's ``SHELL``, else /bin/sh."""
    return os.environ.get("SHELL") or "/bin/sh"


def shell_exec_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """The exec args a ``shell`` command's args run as (the policy judges these, the
    shell runner runs their plan): argv (default :func:`default_shell`), env with ``TERM``
    (default ``xterm-256color``), cwd and timeout_s as sent."""
    env = args.get("env")
    out: dict[str, Any] = {
        "argv": args.get("argv") or [default_shell()],
        "env": {"TERM": str(args.get("term") or DEFAULT_TERM),
                **(dict(env) if isinstance(env, Mapping) else {})}}
    for key in ("cwd", "timeout_s"):
        if args.get(key) is not None:
            out[key] = args[key]
    return out


@dataclass(frozen=True, slots=True)
class Policy:
    allow_kinds: tuple[str, ...] | None = None  # None: every kind the node knows
    deny_kinds: tuple[str, ...] = ()
    exec_allow: tuple[str, ...] | None = None  # absolute paths or names on PATH; None: any
    exec_env_allow: tuple[str, ...] = ()  # patterns (fnmatch) that lift GUARDED_ENV
    exec_cwd_allow: tuple[str, ...] | None = None  # absolute directories; None: any
    max_concurrent: int | None = None
    default_timeout_s: float | None = None
    max_timeout_s: float | None = None
    max_output_bytes: int | None = None  # per command; past it output is dropped, counted
    # absolute directories a file.send may read beside the workspace (rule 6); None: none
    file_read_allow: tuple[str, ...] | None = None
    source: str = field(default="default", compare=False)

    @classmethod
    def load(cls, path: Path | None) -> Policy:
        """The policy in ``path``; the permissive default when there is none."""
        if path is None or not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
        except ValueError as exc:
            raise PolicyError(f"policy file {path} is not valid JSON: {exc}") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "inline") -> Policy:
        if not isinstance(raw, dict):
            raise PolicyError(f"policy {source} must be a JSON object")
        known = {"allow_kinds", "deny_kinds", "exec_allow", "exec_env_allow",
                 "exec_cwd_allow", "max_concurrent", "default_timeout_s", "max_timeout_s",
                 "max_output_bytes", "file_read_allow"}
        unknown = set(raw) - known
        if unknown:
            raise PolicyError(f"policy {source}: unknown field(s) {sorted(unknown)}; "
                              f"known: {sorted(known)}")

        def names(key: str) -> tuple[str, ...] | None:
            value = raw.get(key)
            if value is None:
                return None
            if not isinstance(value, list) or not all(isinstance(v, str) and v
                                                      and _no_nul(v) for v in value):
                raise PolicyError(f"policy {source}: {key!r} must be a list of strings")
            return tuple(value)

        def number(key: str, kind: type) -> Any:
            value = raw.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 \
                    or not math.isfinite(value) or (kind is int and not isinstance(value, int)):
                raise PolicyError(f"policy {source}: {key!r} must be a positive "
                                  f"{'integer' if kind is int else 'number'}")
            return value

        exec_allow = names("exec_allow")
        for entry in exec_allow or ():
            if "/" in entry and not entry.startswith("/"):
                raise PolicyError(f"policy {source}: exec_allow entry {entry!r} must be a "
                                  "bare name or an absolute path")
        exec_cwd_allow = names("exec_cwd_allow")
        for entry in exec_cwd_allow or ():
            if not entry.startswith("/"):
                raise PolicyError(f"policy {source}: exec_cwd_allow entry {entry!r} must be "
                                  "an absolute path")
        file_read_allow = names("file_read_allow")
        for entry in file_read_allow or ():
            if not entry.startswith("/"):
                raise PolicyError(f"policy {source}: file_read_allow entry {entry!r} must "
                                  "be an absolute path")
        policy = cls(allow_kinds=names("allow_kinds"), deny_kinds=names("deny_kinds") or (),
                     exec_allow=exec_allow, exec_env_allow=names("exec_env_allow") or (),
                     exec_cwd_allow=exec_cwd_allow,
                     max_concurrent=number("max_concurrent", int),
                     default_timeout_s=number("default_timeout_s", float),
                     max_timeout_s=number("max_timeout_s", float),
                     max_output_bytes=number("max_output_bytes", int),
                     file_read_allow=file_read_allow, source=source)
        if policy.default_timeout_s and policy.max_timeout_s and \
                policy.default_timeout_s > policy.max_timeout_s:
            raise PolicyError(f"policy {source}: default_timeout_s exceeds max_timeout_s")
        return policy

    def check(self, kind: str, args: Mapping[str, Any]) -> str | None:
        """The rule that refuses this command, or None. Control kinds (cancel, pause,
        resume) are never refused: stopping work must always be possible. An ``exec`` is
        judged by :meth:`plan_exec`, and so is a ``shell``: allowed by default as ``exec``
        is, refused by ``deny_kinds: ["shell"]`` (or an ``allow_kinds`` without it), and
        what it runs (its argv, the node's login shell by default) is judged as an exec's
        (:func:`shell_exec_args`)."""
        if kind in CONTROL_KINDS:
            return None
        if kind in self.deny_kinds:
            return f"kind {kind!r} is in deny_kinds"
        if self.allow_kinds is not None and kind not in self.allow_kinds:
            return f"kind {kind!r} is not in allow_kinds"
        if kind not in ("exec", "shell"):
            return None
        try:
            self.plan_exec(shell_exec_args(args) if kind == "shell" else args)
        except Refused as exc:
            return exc.message
        return None

    def plan_exec(self, args: Mapping[str, Any], *, runtime_cwd: str | None = None
                  ) -> ExecPlan:
        """What ``exec`` with ``args`` will run (rules 1-5 of the module docstring). Raises
        :class:`Refused` with the rule. ``runtime_cwd`` (default: the process's) is the
        directory a command without ``cwd`` would start in."""
        argv = args.get("argv")
        argv = list(argv) if isinstance(argv, list | tuple) else None
        if not argv or not all(isinstance(a, str) for a in argv) or not argv[0]:
            if self.exec_allow is not None:
                program = argv[0] if argv else None
                raise Refused(f"executable {program!r} is not in exec_allow")
            raise Refused("exec needs 'argv', a non-empty list of strings")
        if not _no_nul(*argv):
            raise Refused("argv must not contain NUL characters")
        env = self._env(args.get("env"))
        runtime_cwd = runtime_cwd or os.getcwd()
        cwd = self._cwd(args.get("cwd"), runtime_cwd)
        if self.exec_allow is not None:
            search = env.get("PATH", _runtime_path())
            here = os.path.join(runtime_cwd, cwd) if cwd else runtime_cwd
            path = _locate(argv[0], search_path=search, cwd=here)
            if path is None or not self._allowed(path, here):
                raise Refused(f"executable {argv[0]!r} is not in exec_allow")
            argv = [path, *argv[1:]]
            executable: str | None = os.path.realpath(path)
        else:
            executable = None
        return ExecPlan(argv=tuple(argv), env=env, cwd=cwd,
                        timeout_s=self._timeout(args.get("timeout_s")), executable=executable)

    def _env(self, env: Any) -> dict[str, str]:
        if env is None:
            return {}
        if not isinstance(env, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise Refused("exec 'env' must be a map of strings to strings")
        for name, value in env.items():
            if not name or "=" in name or not _no_nul(name, value):
                raise Refused(f"env name {name!r} is not a variable name (or its value "
                              "holds NUL)")
            if self.exec_allow is not None and guarded(name) and not any(
                    fnmatchcase(name, pattern) for pattern in self.exec_env_allow):
                raise Refused(f"env {name} may change what runs; allow it with "
                              "exec_env_allow")
        return dict(env)

    def _cwd(self, cwd: Any, runtime_cwd: str) -> str | None:
        if cwd is None:
            return self.exec_cwd_allow[0] if self.exec_cwd_allow else None
        if not isinstance(cwd, str) or not cwd or not _no_nul(cwd):
            raise Refused("exec 'cwd' must be a directory path")
        if self.exec_cwd_allow is None:
            return cwd
        real = os.path.realpath(os.path.join(runtime_cwd, cwd))
        if not _within(real, self.exec_cwd_allow):
            raise Refused(f"cwd {cwd!r} is not under exec_cwd_allow")
        return real

    def _timeout(self, sent: Any) -> float | None:
        if sent is None:
            return self.default_timeout_s or self.max_timeout_s
        if isinstance(sent, bool) or not isinstance(sent, int | float) \
                or not math.isfinite(sent) or sent <= 0:
            raise Refused(f"timeout_s {sent!r} is not a positive number of seconds")
        if self.max_timeout_s is not None and sent > self.max_timeout_s:
            raise Refused(f"timeout_s {sent} exceeds max_timeout_s {self.max_timeout_s:g}")
        return float(sent)

    def _allowed(self, path: str, cwd: str) -> bool:
        """``path`` (resolved) is the file of an exec_allow entry (rule 2)."""
        trusted = _runtime_path()
        for entry in self.exec_allow or ():
            listed = _locate(entry, search_path=trusted, cwd=cwd)
            if listed is not None and _same_program(path, listed):
                return True
        return False

    def file_source(self, src: Any, workspace: Path) -> Path:
        """The file a ``file.send`` reads (rule 6): ``src`` relative to the workspace, or
        absolute; every symlink and ``..`` resolved, it must be the workspace or beneath
        it, or beneath a ``file_read_allow`` entry. Raises :class:`Refused`."""
        if not isinstance(src, str) or not src or not _no_nul(src):
            raise Refused("file.send 'src' must be a file path")
        real = os.path.realpath(os.path.join(workspace, src))
        roots = (str(workspace), *(self.file_read_allow or ()))
        if not _within(real, roots):
            raise Refused(f"src {src[:200]!r} is outside the workspace"
                          + (" and file_read_allow" if self.file_read_allow else ""))
        return Path(real)

    def effective_timeout(self, args: Mapping[str, Any]) -> float | None:
        """The timeout an exec with ``args`` runs under (rule 5); None when ``timeout_s``
        is refused (``check`` names why)."""
        try:
            return self._timeout(args.get("timeout_s"))
        except Refused:
            return None

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v not in (None, ()) and k != "source"}
        out["source"] = self.source
        out["digest"] = hashlib.sha256(json.dumps(out, sort_keys=True, default=list)
                                       .encode()).hexdigest()[:12]
        return out
