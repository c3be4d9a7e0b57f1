"""Run the project's commands as a user does, without paying the imports for each one.

``python main.py ...`` spends 4-8 s on two CPU cores importing torch, torchvision (which pulls in
torch._dynamo) and the project before the command starts, and the tests run about a hundred such
commands. :func:`run` and :func:`start` take the same command lists as :mod:`subprocess` and, for
``[sys.executable, script.py | -m module, *args]``, fork the command from one server process that
has imported those modules once. The child runs the command as ``python`` would: the script or module
as ``__main__`` (runpy), ``sys.argv``, ``sys.path[0]``, the working folder, the whole environment
(thread count from ``OMP_NUM_THREADS``), stdin from /dev/null, stdout and stderr captured, the exit
status from ``SystemExit``, an uncaught exception (traceback on stderr, status 1) or a signal, and the
``atexit`` handlers. Processes a command starts itself (torch.distributed.run's workers) are real
interpreters. Any other command, or every command when ``UNIADAFOCUS_TEST_FORK=0``, runs through
:mod:`subprocess` unchanged; ``tests/test_entry_points.py`` checks that both ways give the same result.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SERVER = r"""
import atexit, io, json, os, runpy, signal, sys, threading, traceback
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as main.py does before torch loads OpenMP
sys.path[0] = os.getcwd()  # the repository, as for `python main.py` run there
import torch
# what the commands import; not the modules run with -m themselves (runpy warns when those are imported)
import main, test_early_exit, models.inference, datasets.clip, ops.early_exit, ops.visualize  # noqa: F401
DEFAULT_THREADS = torch.get_num_threads()
replies = os.fdopen(int(sys.argv[1]), "w")


def child(request):
    os.setpgid(0, 0)  # the command and what it starts form one group, killed together on a timeout
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    torch.set_num_threads(int(request["env"].get("OMP_NUM_THREADS") or DEFAULT_THREADS))
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True, errors="backslashreplace")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 0
    try:
        target, args = request["target"], request["args"]
        sys.argv = [target] + args
        if request["module"]:
            sys.path[0] = os.getcwd()
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.path[0] = os.path.dirname(os.path.abspath(target))
            runpy.run_path(target, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()  # join non-daemon threads, as the interpreter does at exit
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


for line in sys.stdin:
    request = json.loads(line)
    if "wait" in request:
        _, status = os.waitpid(request["wait"], 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()
        continue
    replies.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        replies.close()
        child(request)
    try:
        os.setpgid(pid, pid)  # also here, so that a kill right after the start reaches the group
    except OSError:
        pass
    replies.write(json.dumps({"pid": pid}) + "\n")
    replies.flush()
"""


class _Server:
    """The forking server: started on first use, stopped when the test session ends."""

    def __init__(self):
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        env.pop("OMP_NUM_THREADS", None)  # each command sets its own; the default is torch's
        self.folder = Path(tempfile.mkdtemp(prefix="entry-points-"))
        self.log = self.folder / "server.stderr"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([sys.executable, "-c", SERVER, str(write_fd)], cwd=REPO, env=env,
                                            stdin=subprocess.PIPE, text=True, pass_fds=(write_fd,),
                                            stdout=subprocess.DEVNULL, stderr=log)
        os.close(write_fd)
        self.replies = os.fdopen(read_fd, "r")
        self.count = 0

    def ask(self, request: dict, timeout: float | None = None) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        if timeout is not None and not select.select([self.replies], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(request.get("target", "wait"), timeout)
        line = self.replies.readline()
        if not line:
            raise RuntimeError(f"the test command server ended (exit status {self.process.wait()}):\n"
                               f"{self.log.read_text(errors='replace')[-3000:]}")
        return json.loads(line)

    def close(self):
        try:
            self.process.stdin.close()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


_server: _Server | None = None


def _get_server() -> _Server:
    global _server
    if _server is None or _server.process.poll() is not None:
        _server = _Server()
        atexit.register(_server.close)
    return _server


def forking() -> bool:
    """Whether commands are forked from the server (``UNIADAFOCUS_TEST_FORK=0`` turns it off)."""
    return os.environ.get("UNIADAFOCUS_TEST_FORK", "1") != "0"


# Read when an interpreter or its OpenMP runtime starts, so a forked command cannot change them.
_STARTUP_PREFIXES = ("PYTHON", "OMP_", "KMP_", "MKL_", "GOMP_", "LD_", "MALLOC_")
_PER_COMMAND = ("PYTHONUNBUFFERED", "OMP_NUM_THREADS")


def _startup_settings(env) -> dict:
    settings = {k: v for k, v in env.items() if k.startswith(_STARTUP_PREFIXES) and k not in _PER_COMMAND}
    settings.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # main.py's own default
    return settings


def _forkable(cmd, env) -> bool:
    """A Python command whose start-up settings are the server's."""
    return (forking() and len(cmd) >= 2 and cmd[0] == sys.executable
            and (cmd[1] == "-m" and len(cmd) >= 3 or not cmd[1].startswith("-"))
            and _startup_settings(os.environ if env is None else env) == _startup_settings(os.environ))


class Running:
    """A started command: ``pid``, ``wait(timeout)`` -> CompletedProcess, ``kill()``."""

    def __init__(self, cmd, cwd, env):
        self.args = [str(c) for c in cmd]
        self.forked = _forkable(self.args, env)
        self.result = None
        if not self.forked:
            self.popen = subprocess.Popen(self.args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          start_new_session=True)
            self.pid = self.popen.pid
            return
        server = _get_server()
        server.count += 1
        stem = server.folder / f"{server.count}"
        self.stdout, self.stderr = Path(f"{stem}.stdout"), Path(f"{stem}.stderr")
        module = self.args[1] == "-m"
        request = {"target": self.args[2] if module else self.args[1], "args": self.args[3 if module else 2:],
                   "module": module, "cwd": str(cwd or os.getcwd()), "env": dict(os.environ if env is None else env),
                   "stdout": str(self.stdout), "stderr": str(self.stderr)}
        self.server = server
        self.pid = server.ask(request)["pid"]

    def kill(self, sig=signal.SIGKILL):
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> subprocess.CompletedProcess:
        if self.result is not None:
            return self.result
        if not self.forked:
            try:
                out, err = self.popen.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.popen.communicate()
                raise
            self.result = subprocess.CompletedProcess(self.args, self.popen.returncode, out, err)
            return self.result
        try:
            returncode = self.server.ask({"wait": self.pid}, timeout=timeout)["returncode"]
        except subprocess.TimeoutExpired:
            self.kill()
            self.server.replies.readline()  # the reply to the wait, now that the command is gone
            raise subprocess.TimeoutExpired(self.args, timeout) from None
        out = self.stdout.read_text(errors="replace")
        err = self.stderr.read_text(errors="replace")
        self.stdout.unlink()
        self.stderr.unlink()
        self.result = subprocess.CompletedProcess(self.args, returncode, out, err)
        return self.result

    def poll(self):
        """The exit status when the command has ended, else None (without waiting)."""
        if self.result is not None:
            return self.result.returncode
        if not self.forked:
            return None if self.popen.poll() is None else self.wait().returncode
        with open(f"/proc/{self.pid}/stat") as stat:  # the server reaps it only when asked: ended = zombie
            ended = stat.read().rsplit(")", 1)[1].split()[0] == "Z"
        return self.wait().returncode if ended else None


def start(cmd, cwd=REPO, env=None) -> Running:
    """Start ``cmd`` (a subprocess-style list) and return at once."""
    return Running(cmd, cwd, env)


def run(cmd, cwd=REPO, env=None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)``, forked."""
    return start(cmd, cwd, env).wait(timeout)


def wait_all(started, timeout: float | None = None):
    """Wait for several started commands in turn; their CompletedProcess list."""
    deadline = None if timeout is None else time.time() + timeout
    return [s.wait(None if deadline is None else max(1.0, deadline - time.time())) for s in started]


def run_many(commands, cwd=REPO, env=None, timeout: float | None = None, at_once: int = 2):
    """Run independent commands ``at_once`` at a time (one per CPU core when each runs one thread);
    their CompletedProcess list, in order. ``env`` is one environment for all or a list, one per command."""
    envs = env if isinstance(env, list) else [env] * len(commands)
    results, running = [None] * len(commands), []
    try:
        for index, (cmd, cmd_env) in enumerate(zip(commands, envs)):
            if len(running) == at_once:
                first, started = running.pop(0)
                results[first] = started.wait(timeout)
            running.append((index, start(cmd, cwd, cmd_env)))
        while running:
            index, started = running.pop(0)
            results[index] = started.wait(timeout)
    finally:
        for _, started in running:  # after a timeout: nothing is left running
            started.kill()
            started.wait()
    return results
