"""A command forked from the test server (tests/entry_points.py) behaves as the same command run by a
fresh interpreter: output, exit status, argv, path, folder, environment, threads, atexit, kill, timeout."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import entry_points

PROBE = textwrap.dedent("""
    import atexit, json, os, sys
    how = sys.argv[1]
    threads = __import__("torch").get_num_threads() if how == "ok" else None  # a fresh torch import takes seconds
    atexit.register(lambda: print("atexit ran"))
    print(json.dumps({"argv": sys.argv[1:], "path0": sys.path[0], "cwd": os.getcwd(), "name": __name__,
                      "marker": os.environ.get("PROBE_MARKER"), "threads": threads, "stdin": sys.stdin.read()}))
    print("to stderr", file=sys.stderr)
    if how == "code":
        sys.exit(3)
    if how == "message":
        sys.exit("error: a message")
    if how == "raise":
        raise ValueError("boom")
    if how == "sleep":
        import time
        time.sleep(60)
""")


@pytest.fixture(autouse=True)
def fork_on(monkeypatch):
    """These tests are about the forked way, also in a session that turns it off for the others."""
    monkeypatch.setenv("UNIADAFOCUS_TEST_FORK", "1")


@pytest.fixture
def probe(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    package = tmp_path / "probepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tool.py").write_text(PROBE)
    return tmp_path


def _both(cmd, cwd, env):
    forked = entry_points.run(cmd, cwd=cwd, env=env, timeout=120)
    plain = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=120)
    return forked, plain


@pytest.mark.parametrize("how", ["ok", "code", "message", "raise"])
@pytest.mark.parametrize("module", [False, True], ids=["script", "module"])
def test_a_forked_command_gives_what_a_fresh_interpreter_gives(probe, how, module):
    env = dict(os.environ, PROBE_MARKER="m1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable] + (["-m", "probepkg.tool"] if module else ["probe.py"]) + [how, "x y"]
    assert entry_points.forking() and entry_points._forkable(cmd, env)
    forked, plain = _both(cmd, probe, env)
    assert forked.returncode == plain.returncode == {"ok": 0, "code": 3, "message": 1, "raise": 1}[how]
    assert forked.stdout == plain.stdout
    assert '"marker": "m1"' in forked.stdout and '"name": "__main__"' in forked.stdout
    assert ('"threads": 1' if how == "ok" else '"threads": null') in forked.stdout
    assert forked.stdout.rstrip().endswith("atexit ran")
    if how == "raise":  # the traceback's frames differ (runpy's); its last line and its start do not
        assert forked.stderr.startswith("to stderr\nTraceback") and plain.stderr.startswith("to stderr\nTraceback")
        assert forked.stderr.splitlines()[-1] == plain.stderr.splitlines()[-1] == "ValueError: boom"
    else:
        assert forked.stderr == plain.stderr


def test_the_thread_count_follows_each_commands_environment(probe):
    threads = []
    for value in ("1", "2"):
        result = entry_points.run([sys.executable, "probe.py", "ok"], cwd=probe,
                                  env=dict(os.environ, OMP_NUM_THREADS=value), timeout=120)
        threads.append(result.stdout.split('"threads": ')[1].split(",")[0])
    assert threads == ["1", "2"]


def test_a_start_up_setting_of_its_own_runs_the_command_in_a_fresh_interpreter(probe):
    cmd = [sys.executable, "probe.py", "ok"]
    assert not entry_points._forkable(cmd, dict(os.environ, PYTHONHASHSEED="7"))
    assert not entry_points._forkable(cmd, dict(os.environ, OMP_WAIT_POLICY="ACTIVE"))
    assert not entry_points._forkable([sys.executable, "-c", "print(1)"], None)
    result = entry_points.run(cmd, cwd=probe, env=dict(os.environ, PYTHONHASHSEED="7"), timeout=120)
    assert result.returncode == 0 and result.stdout.rstrip().endswith("atexit ran")


def test_a_killed_command_reports_the_signal_and_two_run_at_once(probe):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.time()
    sleepers = [entry_points.start([sys.executable, "probe.py", "sleep"], cwd=probe, env=env) for _ in range(2)]
    time.sleep(1.0)
    assert [s.poll() for s in sleepers] == [None, None]
    for s in sleepers:
        s.kill()
    results = entry_points.wait_all(sleepers, timeout=60)
    assert [r.returncode for r in results] == [-signal.SIGKILL] * 2
    assert time.time() - t0 < 50  # they ran side by side and did not sleep their 60 s


def test_a_command_past_its_timeout_is_killed(probe):
    with pytest.raises(subprocess.TimeoutExpired):
        entry_points.run([sys.executable, "probe.py", "sleep"], cwd=probe, env=dict(os.environ), timeout=3)
    result = entry_points.run([sys.executable, "probe.py", "ok"], cwd=probe, env=dict(os.environ), timeout=120)
    assert result.returncode == 0  # the server goes on serving
