"""tests/forked.py behaves as ``subprocess`` with a fresh interpreter does, for what the suite uses."""
import os
import signal
import subprocess
import sys

import forked


def test_exit_status_streams_cwd_environment_and_stdin(tmp_path):
    code = ("import os, sys\nprint(os.getcwd(), os.environ['PP_X'], sys.stdin.read().strip(), sys.argv)\n"
            "print('to stderr', file=sys.stderr)\nprint('polyprune' in sys.modules)\nsys.exit(3)")
    args = ["-c", code, "a", "b"]
    env = {**os.environ, "PP_X": "x"}
    ref = subprocess.run([sys.executable, *args], input="in", capture_output=True, text=True, cwd=tmp_path, env=env)
    r = forked.run(args, input="in", cwd=tmp_path, env=env)
    assert (r.returncode, r.stdout, r.stderr) == (ref.returncode, ref.stdout, ref.stderr)
    assert r.stdout == f"{tmp_path} x in ['-c', 'a', 'b']\nFalse\n"  # the server preloads no polyprune


def test_module_script_traceback_and_signals(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import sys\nprint(__name__, sys.argv)\nraise ValueError('boom')\n")
    r = forked.run([str(script), "z"])
    assert r.returncode == 1 and r.stdout == f"__main__ ['{script}', 'z']\n"
    assert r.stderr.strip().splitlines()[-1] == "ValueError: boom" and "Traceback" in r.stderr
    r = forked.run(["-m", "polyprune", "list", "refinements"])
    ref = subprocess.run([sys.executable, "-m", "polyprune", "list", "refinements"], capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (ref.returncode, ref.stdout) and ref.stdout.startswith("dsnot")
    p = forked.Popen(["-c", "import time\ntime.sleep(60)"])
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL
    merged = forked.run(["-c", "import sys\nprint('a', flush=True)\nprint('b', file=sys.stderr)\nprint('c')"],
                        merge=True)
    assert merged.stdout == "a\nb\nc\n" and merged.stderr is None
