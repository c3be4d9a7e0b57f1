"""The GPU check in one call: the ``gpu``-marked tests and the GPU benchmarks, summarised in OUT_DIR.

    scripts/gpu_check.sh OUT_DIR            # = python -m scripts.gpu_check OUT_DIR
    python -m scripts.gpu_check OUT_DIR --budget_s 450 --no-compile

On a CUDA machine, within ``--budget_s`` seconds (default 450, under 8 minutes on one GPU), each part
in a subprocess with its own time limit:

1. ``pytest -m gpu`` over ``tests/`` (``OUT_DIR/pytest_gpu.log``, ``OUT_DIR/pytest_gpu.xml``): parity of
   every variant on CUDA, AMP training steps, the adaptive early-exit runtime, a torchrun NCCL run;
2. ``scripts/bench_gpu.py``: training and evaluation videos/s of the main variant at P = 128,
   T_G = T_L = 16, T0 = 48, 224 px (random weights, synthetic inputs), float32 against the fast settings
   (channels-last, bfloat16 autocast, cuDNN's algorithm search), alternated in one run, and the host
   synchronisations of a training step;
3. ``scripts/bench_gpu.py --loader``: clips/s of the training loader on JPEG frame folders with a worker
   per CPU and pinned memory;
4. when at least ``--compile_min_s`` seconds remain (and without ``--no-compile``): the fast settings
   against the same with torch.compile'd encoders, alternated in one run (compilation time included in
   the reported warm-up).

It writes ``OUT_DIR/gpu_check.json`` (everything) and ``OUT_DIR/gpu_check.md`` (device, versions, test
counts, the benchmark table with ratios) and exits with status 1 when a test failed or a part did not
finish, else 0. Without CUDA it prints "no CUDA device: nothing to check", still runs the gpu-marked tests
to show that they skip with their reasons (unless ``--no-tests``), writes both files saying so and exits
with status 0. It needs no network access.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = "no CUDA device: nothing to check"


def log_line(text: str) -> None:
    print(text, flush=True)


class Deadline:
    """The time left of the whole check, shared out between its parts."""

    def __init__(self, budget_s: float):
        self.end = time.monotonic() + budget_s

    def left(self) -> float:
        return self.end - time.monotonic()

    def share(self, cap: float, keep: float = 0.0) -> float:
        """Seconds for the next part: at most ``cap``, leaving ``keep`` for the parts after it."""
        return max(0.0, min(cap, self.left() - keep))


def environment() -> Dict:
    """Device, versions and machine of this check."""
    info = {"torch": torch.__version__, "cuda_runtime": torch.version.cuda, "python": platform.python_version(),
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cuda": torch.cuda.is_available(), "gpus": []}
    if info["cuda"]:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": props.name, "capability": f"{props.major}.{props.minor}",
                                 "memory_gib": round(props.total_memory / 2 ** 30, 1)})
    return info


def run_part(name: str, cmd: List[str], timeout: float, log_path: Path) -> Dict:
    """Run one part in a subprocess (output to ``log_path`` and the console's last lines); its status."""
    if timeout < 1:
        log_line(f"[{name}] skipped: no time left")
        return {"status": "skipped", "reason": "no time left in --budget_s", "seconds": 0.0}
    log_line(f"[{name}] {' '.join(cmd[1:])} (time limit {timeout:.0f} s)")
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        # A session of its own, so that a part out of time goes with everything it started (compile workers).
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
            status = "ok" if code == 0 else f"exit status {code}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timed out after {timeout:.0f} s"
    seconds = time.monotonic() - started
    tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-6:]
    for line in tail:
        log_line(f"[{name}]   {line}")
    log_line(f"[{name}] {status} in {seconds:.0f} s")
    return {"status": status, "seconds": seconds, "log": log_path.name}


def junit_counts(path: Path) -> Dict:
    """Passed / failed / skipped / error counts of a pytest JUnit file, with the failures' names and every
    skip reason (once each, with its count)."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0, "failures": [], "skip_reasons": {}}
    if not path.is_file():
        return counts
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
        elif outcome.tag == "skipped":
            counts["skipped"] += 1
            reason = (outcome.get("message") or "").strip()
            counts["skip_reasons"][reason] = counts["skip_reasons"].get(reason, 0) + 1
        else:
            counts["failed" if outcome.tag == "failure" else "error"] += 1
            counts["failures"].append(name)
    return counts


def run_tests(out_dir: Path, timeout: float) -> Dict:
    xml = out_dir / "pytest_gpu.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-q", "-rs", f"--junitxml={xml}",
           "tests"]
    part = run_part("tests", cmd, timeout, out_dir / "pytest_gpu.log")
    part.update(junit_counts(xml))
    return part


def run_bench(name: str, args: List[str], out_dir: Path, timeout: float) -> Dict:
    figures = out_dir / f"bench_{name}.json"
    part = run_part(name, [sys.executable, "-m", "scripts.bench_gpu", *args, "--json", str(figures)], timeout,
                    out_dir / f"bench_{name}.log")
    if part["status"] == "ok" and figures.is_file():
        part["result"] = json.loads(figures.read_text(encoding="utf-8"))
    elif part["status"] == "ok":
        part["status"] = "no figures written"
    return part


# --------------------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------------------
def _tests_lines(tests: Optional[Dict]) -> List[str]:
    if not tests:
        return ["Tests: not run (--no-tests)."]
    lines = [f"Tests (`pytest -m gpu`, {tests['status']}, {tests['seconds']:.0f} s): {tests['passed']} passed, "
             f"{tests['failed']} failed, {tests['error']} errors, {tests['skipped']} skipped."]
    lines += [f"* failed: `{name}`" for name in tests["failures"]]
    lines += [f"* skipped ({count}): {reason}" for reason, count in tests["skip_reasons"].items()]
    return lines


def _model_rows(part: Optional[Dict], label: str) -> List[str]:
    if not part:
        return []
    if "result" not in part:
        return [f"| {label} | {part['status']} | | | | |"]
    result, rows = part["result"], []
    first = next(iter(result["sides"]))
    for name, side in result["sides"].items():
        ratio = result["ratios"].get(f"{name}/{first}")
        rows.append(f"| {label}: {name} | {side['train_videos_per_s']:.1f} | {side['eval_videos_per_s']:.1f} | "
                    + (f"{ratio['train']:.2f}x | {ratio['eval']:.2f}x" if ratio else "1 | 1")
                    + f" | {side['warmup_s']:.0f} s |")
    return rows


def summary_markdown(report: Dict) -> str:
    """``gpu_check.md``: device, versions, test counts, the benchmark table with ratios."""
    env = report["environment"]
    gpus = ", ".join(f"{g['name']} (compute capability {g['capability']}, {g['memory_gib']} GiB)"
                     for g in env["gpus"]) or "none"
    lines = ["# GPU check", "",
             f"* device: {gpus}",
             f"* torch {env['torch']}, CUDA runtime {env['cuda_runtime']}, cuDNN {env['cudnn']}, Python "
             f"{env['python']}, {env['cpus']} CPUs",
             f"* total time: {report['seconds']:.0f} s", ""]
    if not env["cuda"]:
        lines += [f"**{NO_CUDA}.**", ""]
    lines += _tests_lines(report.get("tests")) + [""]
    model, compiled = report.get("model"), report.get("compile")
    if model or compiled:
        config = (model or compiled).get("result", {}).get("config", "")
        lines += [f"Model throughput ({config}; median of alternated rounds; ratios to the first side of each row "
                  "group):", "",
                  "| side | train videos/s | eval videos/s | train ratio | eval ratio | warm-up |",
                  "|---|---|---|---|---|---|"]
        lines += _model_rows(model, "settings") + _model_rows(compiled, "compile")
        syncs = (model or {}).get("result", {}).get("syncs_per_training_step")
        if syncs:
            lines += ["", f"Host synchronisations per training step outside the print steps ({syncs['side']}): "
                          f"{syncs.get('count', syncs.get('error'))}."]
            lines += [f"* {count:g} per step at `{site}`" for site, count in syncs.get("sites", {}).items()]
        lines.append("")
    if report.get("compile_skipped"):
        lines += [f"torch.compile: not measured ({report['compile_skipped']}).", ""]
    loader = report.get("loader")
    if loader:
        r = loader.get("result", {})
        if "clips_per_s" in r:
            lines.append(f"Loader: {r['clips_per_s']:.1f} clips/s ({r['clip']}; {r['workers']} workers, batch "
                         f"{r['batch']}, pin_memory {r['pin_memory']}; frames read from the page cache).")
            fast = (model or {}).get("result", {}).get("sides", {}).get("fast")
            if fast:
                ratio = r["clips_per_s"] / fast["train_videos_per_s"]
                lines.append(f"The fast settings train {fast['train_videos_per_s']:.1f} videos/s on one GPU: the "
                             f"loader delivers {ratio:.2f}x that ({'enough' if ratio >= 1 else 'not enough'}).")
        else:
            lines.append(f"Loader: {loader['status']}" + ("" if loader["status"] != "ok" else
                                                          ": no clips/s in its figures") + ".")
        lines.append("")
    return "\n".join(lines)


def write_report(out_dir: Path, report: Dict) -> None:
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out_dir / "gpu_check.md").write_text(summary_markdown(report), encoding="utf-8")
    log_line(f"wrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'}")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_dir", help="folder for gpu_check.json, gpu_check.md and the parts' logs")
    p.add_argument("--budget_s", type=float, default=450.0, help="seconds for the whole check")
    p.add_argument("--no-tests", dest="tests", action="store_false", help="skip pytest -m gpu")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile comparison")
    p.add_argument("--compile_min_s", type=float, default=150.0,
                   help="measure torch.compile only when this many seconds remain")
    opts = p.parse_args(argv)
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = Deadline(opts.budget_s)
    report: Dict = {"environment": environment(), "budget_s": opts.budget_s}
    env = report["environment"]
    log_line(f"torch {env['torch']}, CUDA runtime {env['cuda_runtime']}, "
             + (", ".join(g["name"] for g in env["gpus"]) if env["cuda"] else "no GPU"))

    if not env["cuda"]:
        log_line(NO_CUDA)
        report["message"] = NO_CUDA
        if opts.tests:  # to show that every gpu test skips, with its reason
            report["tests"] = run_tests(out_dir, deadline.share(300))
        report["seconds"] = time.monotonic() - started
        write_report(out_dir, report)
        return 0

    # Time limits: each part gets at most its cap and leaves the later parts their minimum.
    if opts.tests:
        report["tests"] = run_tests(out_dir, deadline.share(240, keep=180))
    report["model"] = run_bench("model", ["--max_seconds", "45"], out_dir, deadline.share(120, keep=60))
    report["loader"] = run_bench("loader", ["--loader"], out_dir, deadline.share(60))
    if not opts.compile:
        report["compile_skipped"] = "--no-compile"
    elif deadline.left() < opts.compile_min_s:
        report["compile_skipped"] = f"{deadline.left():.0f} s left, under --compile_min_s {opts.compile_min_s:.0f}"
    else:
        report["compile"] = run_bench("compile", ["--sides", "fast", "compile", "--rounds", "3", "--max_seconds", "30",
                                                  "--no-count_syncs"], out_dir, deadline.share(deadline.left() - 5))
    report["seconds"] = time.monotonic() - started
    write_report(out_dir, report)
    return 0 if passed(report) else 1


def passed(report: Dict) -> bool:
    """Whether every test passed and every part finished (the optional torch.compile comparison may run out
    of time, but not fail)."""
    tests = report.get("tests")
    if tests and (tests["failed"] or tests["error"] or tests["status"] not in ("ok", "exit status 1")):
        return False
    if any(report[k]["status"] != "ok" for k in ("model", "loader") if k in report):
        return False
    if "loader" in report and "clips_per_s" not in report["loader"].get("result", {}):
        return False  # the loader part ran, but not the loader benchmark
    compiled = report.get("compile")
    return not compiled or compiled["status"] == "ok" or compiled["status"].startswith("timed out")


if __name__ == "__main__":
    sys.exit(main())
