"""``python ARGS`` for the suite's short processes, forked from a server that has torch and
transformers imported already (``multiprocessing``'s forkserver).

Each command is still its own process: its own pid, signals, exit status, stdout/stderr, working
folder, environment and standard input, and polyprune itself is imported afresh in it (the server
imports third-party libraries only, so a "plain transformers" child has no polyprune in it). What
it skips is the import of torch and transformers: 3.3 s of every 5.3 s CLI prune of a tiny model
here (``python -X importtime``), most of the fault-injection tests' cost.

Not for commands that depend on environment variables a library reads at import time, other than
the offline switches the suite sets before the server starts (conftest): use ``subprocess``."""
from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

PRELOAD = ["torch", "numpy", "safetensors", "tokenizers", "transformers", "yaml", "pydantic", "typer", "rich",
           "filelock", "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
           "transformers.models.llama.modeling_llama", "transformers.models.gpt2.modeling_gpt2",
           "transformers.models.gemma3.modeling_gemma3", "transformers.models.qwen2.modeling_qwen2",
           "transformers.tokenization_utils_fast", "torch.distributed"]
_ctx = None
_ENV = dict(os.environ)  # as the suite set it up (conftest), before any test changes it


def _context():
    """The forkserver, started once with the environment of the suite's start: libraries read some
    variables when the server imports them, and a test's monkeypatched value must not stay there."""
    global _ctx
    if _ctx is None:
        from multiprocessing import forkserver
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        now = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update(_ENV)
            forkserver.ensure_running()
        finally:
            os.environ.clear()
            os.environ.update(now)
        _ctx = ctx
    return _ctx


def _interpret(argv: list[str]) -> None:
    """What ``python *argv`` runs: ``-m MODULE``, ``-c CODE`` or ``SCRIPT``, with sys.argv and sys.path set."""
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        sys.path.insert(0, os.getcwd())
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    else:
        sys.argv = list(argv)
        sys.path.insert(0, str(Path(argv[0]).resolve().parent))
        runpy.run_path(argv[0], run_name="__main__")


def _child(argv: list[str], cwd: str, env: dict, files: tuple[str, str, str]) -> None:
    """The forked process: standard streams on files, then the interpreter's work and exit status."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path, flags in zip((0, 1, 2), files, (os.O_RDONLY, os.O_WRONLY, os.O_WRONLY)):
        if fd == 2 and path == files[1]:  # stderr=STDOUT
            os.dup2(1, 2)
            continue
        f = os.open(path, flags | (os.O_CREAT | os.O_TRUNC if fd else 0), 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdin = open(0, encoding="utf-8", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False, buffering=1)  # line-buffered, as Python's
    code = 0
    try:
        _interpret(argv)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            sys.stderr.write(f"{e.code}\n")
            code = 1
    except BaseException:  # noqa: BLE001  (as the interpreter does: a traceback, exit 1)
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
    os._exit(code)


class Popen:
    """``subprocess.Popen([sys.executable, *argv], stdout=PIPE, stderr=PIPE, text=True)``, forked;
    the parts the tests use: pid, poll, wait, communicate, returncode."""

    def __init__(self, argv, cwd=None, env=None, input: str = "", merge: bool = False):
        self.args = [str(a) for a in argv]
        self._dir = Path(tempfile.mkdtemp(prefix="pp-child-"))
        files = tuple(str(self._dir / n) for n in ("in", "out", "out" if merge else "err"))
        Path(files[0]).write_text(input, encoding="utf-8")
        self._proc = _context().Process(target=_child, args=(self.args, str(cwd or os.getcwd()),
                                                             dict(os.environ if env is None else env), files))
        self._proc.start()
        self.pid = self._proc.pid
        self.returncode = None

    def poll(self):
        if self.returncode is None and not self._proc.is_alive():
            self.returncode = self._proc.exitcode
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout=None):
        self._proc.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout=None):
        self.wait(timeout)
        out, err = ((self._dir / n).read_text(encoding="utf-8", errors="replace") if (self._dir / n).exists()
                    else None for n in ("out", "err"))
        for n in ("in", "out", "err"):
            (self._dir / n).unlink(missing_ok=True)
        self._dir.rmdir()
        return out, err


def run(argv, cwd=None, env=None, input: str = "", merge: bool = False, timeout=600) -> subprocess.CompletedProcess:
    """``subprocess.run([sys.executable, *argv], capture_output=True, text=True)``, forked
    (``merge``: stderr into stdout, as ``2>&1``)."""
    p = Popen(argv, cwd=cwd, env=env, input=input, merge=merge)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def polyprune(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """``python -m polyprune ARGS``, forked, with progress off as the suite has it."""
    return run(["-m", "polyprune", *args], cwd=cwd, env={**(os.environ if env is None else env),
                                                          "POLYPRUNE_PROGRESS": "0"}, timeout=timeout)
