#!/usr/bin/env python
"""Run the paper's ablation tables: every row's training and evaluation, then the table in the paper's form.

    python -m scripts.ablate --tables 9 10 11 --base configs/synthetic.yaml --seeds 1 2 3 --out exp/ablations
    python -m scripts.ablate --rows 'table9-*' --dry_run                 # the commands, nothing run
    python -m scripts.ablate --tables 10 -- --epochs 2 --workers 0       # main.py flags after --
    torchrun --nproc_per_node=4 -m scripts.ablate --tables 10 ...        # each run on the 4 processes

A row is a file ``configs/ablations/table{N}-{slug}.yaml`` (docs/ablations.md): its first line names the
row (``# Table N: ...``), its second gives the paper's figures (``# paper: ...``), then ``base:`` and the
flags that make the row. A row's base is a preset or another row file (Tables 10, 11 and 15 build on
Table 9's full model, ``table9-dynamic-ours.yaml``), whose flags the row inherits. Each row's flags
(its own and those of the row files it builds on) are applied on ``--base`` (default: the row's preset)
and written, with the seed and the run folder, to ``ablation.yaml`` in the run folder, which main.py
runs. A row's ``epochs:`` (Table 15's reduced-epoch rows) is relative to its preset's: on another
``--base`` it becomes the same fraction of that base's epochs (rounded, at least 1). Rows whose flags only act at evaluation time (``--remove_dynamics``, ``--budgets``: Table 10)
share one trained model per seed (``{out}/table{N}/model-{digest}/seed{S}``) and are each an
evaluation of it (``metrics_{slug}.json``); the other rows train their own
(``{out}/table{N}/{slug}/seed{S}``). Rows that train the same model (Table 9's full model is Table 11's and
the one Table 10 evaluates) share one run, also with an earlier invocation's folder under ``{out}``. A
finished run or evaluation is reused, never overwritten; an interrupted run continues with ``--resume auto``.

The tables (``{out}/tables.md``, ``tables.json``, ``table{N}.png``) give, per row, the mean over seeds
± half their range (min to max): the metric after t focus frames (the final evaluation's
``stage_scores``) for Tables 6-9, 11 and 15, the metric at each average-GFLOPs budget for Table 10,
with the paper's figures beside them and the runs' wall times.

Under torchrun every process runs this script; each main.py it starts joins the others' (a rendezvous
file under ``{out}/.rendezvous``), rank 0 decides what runs and writes the tables.
"""
from __future__ import annotations

import argparse
import fnmatch
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import yaml

from datasets.files import atomic_write, write_text_atomic
from ops import cli, config, evaluation_report, flags

TABLES = (6, 7, 8, 9, 10, 11, 15)
#: Flags that act only when the trained model is evaluated: rows differing only in them share a model.
EVALUATION_KEYS = ("remove_dynamics", "budgets")
ROWS_DIR = "configs/ablations"
DOCS = "docs/ablations.md"
#: main.py, as a path from the working folder (the configurations' relative paths are the user's).
MAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "main.py")
ROW_NAME = re.compile(r"^table(\d+)-([a-z0-9]+(?:-[a-z0-9]+)*)\.yaml$")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scripts.ablate", allow_abbrev=False, formatter_class=flags.HelpFormatter,
        description="Train and evaluate the paper's ablation rows (configs/ablations) over seeds and write the "
                    "tables in the paper's form. main.py's own flags go after --.")
    p.add_argument("--tables", type=int, nargs="+", default=[], help=f"tables to run, of {list(TABLES)}")
    p.add_argument("--rows", nargs="+", default=[], help="row files to run, as glob patterns of their names "
                                                         "(e.g. 'table9-*', 'table10-remove-spatial')")
    p.add_argument("--base", default=None,
                   help="configuration the rows' flags are applied on (default: each row's own preset); a row's "
                        "epochs: is scaled to it (row epochs / its preset's epochs x this base's, rounded, at least 1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1007], help="seeds (one trained model per row and seed)")
    p.add_argument("--out", default="exp/ablations", help="folder of the runs and the tables")
    p.add_argument("--workers", type=int, default=1, help="runs at a time (1 under torchrun)")
    p.add_argument("--rows_dir", default=ROWS_DIR, help="folder of the row files")
    p.add_argument("--dry_run", action=argparse.BooleanOptionalAction, default=False,
                   help="print the commands (and whether each run is reused or resumed); run nothing")
    p.add_argument("--report_only", action=argparse.BooleanOptionalAction, default=False,
                   help="write the tables from the runs already finished under --out (a row shows the seeds it has); "
                        "train and evaluate nothing")
    return p


# ------------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One row file: ``table``, ``slug``, ``label`` (the paper's row), ``paper`` (its figures' line),
    ``flags`` (the file's keys without ``base``, over those of the row files it builds on), ``base`` (the
    preset under them, a path)."""
    path: str
    table: int
    slug: str
    label: str
    paper: str
    flags: Dict
    base: Optional[str]

    @property
    def name(self) -> str:
        return f"table{self.table}-{self.slug}"

    @property
    def evaluated(self) -> bool:
        """Whether the row is an evaluation of a shared trained model (its flags act at evaluation only)."""
        return any(k in self.flags for k in EVALUATION_KEYS)


def read_row(path: str, _chain: Sequence[str] = ()) -> Row:
    """A row file (with the flags of the row files it builds on), or one line naming the file and what is
    wrong with it."""
    match = ROW_NAME.match(os.path.basename(path))
    if not match:
        raise SystemExit(f"{path}: a row file is named table{{N}}-{{slug}}.yaml (slug: lower-case words joined by '-')")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        values = yaml.safe_load(text) or {}
    except OSError as exc:
        raise SystemExit(f"{path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise SystemExit(f"{path}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    lines = text.splitlines()
    table = int(match.group(1))
    if len(lines) < 2 or not lines[0].startswith(f"# Table {table}: ") or not lines[1].startswith("# paper: "):
        raise SystemExit(f"{path}:1: a row file starts with '# Table {table}: <the row>' and '# paper: <figures>'")
    if not isinstance(values, dict):
        raise SystemExit(f"{path}: expected a mapping of flag names to values")
    flags = {k.replace("-", "_"): v for k, v in values.items()}
    base = flags.pop("base", None)
    base = os.path.normpath(os.path.join(os.path.dirname(path), base)) if base else None
    if base is not None and ROW_NAME.match(os.path.basename(base)):  # another row: its flags, then this one's
        if os.path.normpath(path) in _chain or base == os.path.normpath(path):
            raise SystemExit(f"{path}: base: {os.path.basename(base)} leads back to this row")
        parent = read_row(base, tuple(_chain) + (os.path.normpath(path),))
        flags, base = {**parent.flags, **flags}, parent.base
    return Row(path=path, table=table, slug=match.group(2), label=lines[0].split(": ", 1)[1].strip(),
               paper=lines[1].split(": ", 1)[1].strip(), flags=flags, base=base)


def documented_order(docs: str = DOCS) -> List[str]:
    """Row file names in the order docs/ablations.md lists them (the paper's order within each table)."""
    if not os.path.isfile(docs):
        return []
    with open(docs, encoding="utf-8") as f:
        names = re.findall(r"configs/ablations/(table\d+-[a-z0-9-]+\.yaml)", f.read())
    return list(dict.fromkeys(names))


def find_rows(tables: Sequence[int], patterns: Sequence[str], rows_dir: str = ROWS_DIR) -> List[Row]:
    """The rows of ``tables`` and those matching ``patterns``, by table, in the paper's order."""
    bad = [t for t in tables if t not in TABLES]
    if bad:
        raise SystemExit(f"--tables {bad[0]}: the paper's ablation tables are {', '.join(map(str, TABLES))}")
    if not tables and not patterns:
        raise SystemExit("give --tables N ... and/or --rows GLOB ...")
    if not os.path.isdir(rows_dir):
        raise SystemExit(f"--rows_dir {rows_dir}: folder not found")
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(rows_dir, "table*.yaml")))
    chosen: List[str] = []
    for table in tables:
        found = [f for f in files if f.startswith(f"table{table}-")]
        if not found:
            raise SystemExit(f"--tables {table}: no row files {rows_dir}/table{table}-*.yaml")
        chosen += found
    for pattern in patterns:
        glob_pattern = pattern if pattern.endswith(".yaml") or pattern.endswith("*") else pattern + ".yaml"
        found = [f for f in files if fnmatch.fnmatch(f, glob_pattern)]
        if not found:
            raise SystemExit(f"--rows {pattern}: no row file in {rows_dir} matches (rows: table{{N}}-{{slug}})")
        chosen += found
    order = {name: i for i, name in enumerate(documented_order())}
    rows = [read_row(os.path.join(rows_dir, f)) for f in dict.fromkeys(chosen)]
    return sorted(rows, key=lambda r: (r.table, order.get(os.path.basename(r.path), len(order)), r.slug))


def base_values(path: str) -> Dict:
    """The flag values of a configuration file (checked against main.py's flags)."""
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: configuration file not found")
    return config.load_config_file(path, flags.get_args_parser())


def base_epochs(path: Optional[str]) -> int:
    """The epochs of a configuration file (main.py's default where it sets none, or for no file)."""
    values = base_values(path) if path else {}
    return values.get("epochs", flags.get_args_parser().get_default("epochs"))


def scaled_epochs(row: Row, base: Optional[str]) -> Optional[Dict]:
    """A row's ``epochs:`` on ``base``: ``{"row", "row_base", "base", "epochs"}`` with the row's epochs, its
    preset's, ``base``'s, and the row's fraction of its preset's times ``base``'s (rounded, at least 1);
    None for a row without ``epochs:``."""
    if "epochs" not in row.flags:
        return None
    own, other = base_epochs(row.base), base_epochs(base or row.base)
    return {"row": row.flags["epochs"], "row_base": own, "base": other,
            "epochs": max(1, round(row.flags["epochs"] / own * other))}


def merged_config(row: Row, base: Optional[str]) -> Dict:
    """The row's configuration: ``base`` (default the row's preset) with the row's flags applied on it, its
    ``epochs:`` scaled to the base (:func:`scaled_epochs`)."""
    base = base or row.base
    if base is None:
        raise SystemExit(f"{row.path}: no base: and no --base")
    merged = dict(base_values(base))
    merged.update(row.flags)
    epochs = scaled_epochs(row, base)
    if epochs is not None:
        merged["epochs"] = epochs["epochs"]
    return merged


def digest(values: Dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]


# ------------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One trained model (a row's, or the model shared by evaluation rows) for one seed, with its evaluations."""
    table: int
    run_dir: str
    seed: int
    config: Dict  # training configuration (run folder and seed included)
    rows: List[Row] = field(default_factory=list)  # the rows this run (or its evaluations) gives
    evaluations: List[Row] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"table{self.table} {os.path.basename(os.path.dirname(self.run_dir))} seed {self.seed}"


#: Keys of a run's ablation.yaml that name where and with which seed it runs, not what it trains.
PLACEMENT_KEYS = ("seed", "root_log", "store_name")


def existing_runs(out: str) -> Dict[tuple, str]:
    """Run folders already under ``out`` by (digest of their training configuration, seed): what each run's
    ``ablation.yaml`` trains, without its folder and seed."""
    found: Dict[tuple, str] = {}
    for path in sorted(glob.glob(os.path.join(out, "table*", "*", "seed*", "ablation.yaml"))):
        try:
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(values, dict) and "seed" in values:
            training = {k: v for k, v in values.items() if k not in PLACEMENT_KEYS}
            found.setdefault((digest(training), values["seed"]), os.path.dirname(path))
    return found


def plan_runs(rows: List[Row], base: Optional[str], seeds: Sequence[int], out: str) -> List[Run]:
    """One run per distinct training configuration and seed: rows whose flags train the same model (Table 9's
    full model, Table 11's, the model Table 10's rows evaluate) share one, in this invocation or from an
    earlier one's folder under ``out`` (``existing_runs``)."""
    earlier = existing_runs(out)
    runs: Dict[tuple, Run] = {}
    for row in rows:
        merged = merged_config(row, base)
        training = {k: v for k, v in merged.items() if k not in EVALUATION_KEYS}
        name = f"model-{digest(training)}" if row.evaluated else row.slug
        for seed in seeds:
            key = (digest({k: v for k, v in training.items() if k not in PLACEMENT_KEYS}), seed)
            run_dir = earlier.get(key) or os.path.join(out, f"table{row.table}", name, f"seed{seed}")
            folder = re.match(r"table(\d+)$", os.path.basename(os.path.dirname(os.path.dirname(run_dir))))
            table = int(folder.group(1)) if folder else row.table
            run = runs.setdefault(key, Run(table, run_dir, seed, dict(
                training, seed=seed, root_log=os.path.dirname(run_dir), store_name=os.path.basename(run_dir))))
            run.rows.append(row)
            if row.evaluated:
                run.evaluations.append(row)
    return list(runs.values())


def read_json(path: str) -> Optional[Dict]:
    """A run's metrics file with today's key names (an older run's too), or None when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return evaluation_report.current_names(json.load(f))
    except (OSError, ValueError):
        return None


def run_state(run: Run) -> str:
    """'finished' (every epoch done and evaluated), 'interrupted' (a checkpoint to resume) or 'new'."""
    metrics = read_json(os.path.join(run.run_dir, "metrics.json"))
    saved = os.path.join(run.run_dir, "config.yaml")
    if metrics and os.path.isfile(saved):
        with open(saved, encoding="utf-8") as f:
            epochs = (yaml.safe_load(f) or {}).get("epochs")
        if epochs is not None and metrics.get("epochs_done", 0) >= epochs:
            return "finished"
    return "interrupted" if os.path.isfile(os.path.join(run.run_dir, "ckpt.pth.tar")) else "new"


def training_command(run: Run, state: str, extra: Sequence[str]) -> List[str]:
    return ([sys.executable, os.path.relpath(MAIN), "--config", os.path.join(run.run_dir, "ablation.yaml")]
            + (["--resume", "auto"] if state == "interrupted" else []) + list(extra))


def evaluation_command(run: Run, row: Row, extra: Sequence[str]) -> List[str]:
    return [sys.executable, os.path.relpath(MAIN), "--config", os.path.join(run.run_dir, f"ablation-{row.slug}.yaml"),
            "--evaluate", "--resume", os.path.join(run.run_dir, "ckpt.pth.tar"), "--eval_suffix", row.slug] + list(extra)


class Coordinator:
    """One process, or every process of a torchrun launch: rank 0 decides and writes, the others follow."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.token, self.count = None, 0
        if self.world_size > 1:
            import torch.distributed as dist

            dist.init_process_group("gloo")
            self.dist = dist
            self.token = self.agree(uuid.uuid4().hex)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def agree(self, value):
        """Rank 0's ``value`` on every process."""
        if self.world_size == 1:
            return value
        box = [value]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            self.dist.barrier()

    def child_flags(self, out: str) -> List[str]:
        """The rendezvous of the next main.py the processes start together."""
        if self.world_size == 1:
            return []
        self.count += 1
        folder = os.path.abspath(os.path.join(out, ".rendezvous"))
        os.makedirs(folder, exist_ok=True)
        return ["--dist_url", f"file://{folder}/{self.token}-{self.count}"]

    def close(self) -> None:
        if self.world_size > 1:
            self.dist.destroy_process_group()


class Runner:
    """Carries out the runs: writes their configurations, starts main.py, prints one line per step."""

    def __init__(self, args, extra: Sequence[str], coordinator: Coordinator):
        self.args, self.extra, self.co = args, list(extra), coordinator
        self.lock = threading.Lock()
        self.failures: List[str] = []
        self.steps, self.done = 0, 0

    def say(self, text: str) -> None:
        if self.co.is_main:
            with self.lock:
                print(text, flush=True)

    def step(self, run: Run, what: str, command: List[str]) -> bool:
        """Run one main.py command (every process together under torchrun); False when it failed."""
        with self.lock:
            self.done += 1
            number = f"[{self.done}/{self.steps}]"
        self.say(f"{number} {run.label}: {what}: {' '.join(command)}")
        if self.args.dry_run:
            return True
        command = command + self.co.child_flags(self.args.out)
        env = dict(os.environ)
        env.pop("TORCHELASTIC_USE_AGENT_STORE", None)  # the child's process group meets in its rendezvous file
        log_path = os.path.join(run.run_dir, "ablate.log" if self.co.is_main else f"ablate.rank{self.co.rank}.log")
        started = time.time()
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"---- scripts/ablate.py {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(command)}\n")
            log.flush()
            status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        self.co.barrier()
        if status != 0:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                lines = [line.strip() for line in f if line.strip()]
            message = f"{run.label}: {what} failed (exit status {status}; {log_path}): {lines[-1] if lines else ''}"
            with self.lock:
                self.failures.append(message)
            self.say(f"{number} error: {message}")
            return False
        self.say(f"{number} {run.label}: {what} done in {time.time() - started:.1f}s")
        return True

    def write_config(self, path: str, values: Dict) -> None:
        if self.co.is_main and not self.args.dry_run:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            header = "# written by scripts/ablate.py: the row's flags on its base (main.py --config this file)\n"
            write_text_atomic(path, header + yaml.safe_dump(values, sort_keys=True))
        self.co.barrier()

    def carry_out(self, run: Run) -> None:
        state = self.co.agree(run_state(run))
        if state == "finished":
            self.say(f"{run.label}: finished run reused ({run.run_dir})")
        else:
            self.write_config(os.path.join(run.run_dir, "ablation.yaml"), run.config)
            what = "training (resumed: --resume auto)" if state == "interrupted" else "training"
            if not self.step(run, what, training_command(run, state, self.extra)):
                return
        for row in run.evaluations:
            done = self.co.agree(os.path.isfile(os.path.join(run.run_dir, f"metrics_{row.slug}.json")))
            if done:
                self.say(f"{run.label}: evaluation {row.slug} reused (metrics_{row.slug}.json)")
                continue
            values = dict(run.config, **{k: v for k, v in row.flags.items() if k in EVALUATION_KEYS})
            self.write_config(os.path.join(run.run_dir, f"ablation-{row.slug}.yaml"), values)
            self.step(run, f"evaluation {row.slug}", evaluation_command(run, row, self.extra))

    def count_steps(self, runs: List[Run]) -> None:
        steps = 0
        for run in runs:
            steps += run_state(run) != "finished"
            steps += sum(not os.path.isfile(os.path.join(run.run_dir, f"metrics_{r.slug}.json")) for r in run.evaluations)
        self.steps = steps


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------
def paper_figures(text: str) -> List[float]:
    """The percentages of a row's ``# paper:`` line after its last colon, without parenthesised differences."""
    figures = text.rsplit(":", 1)[-1]
    return [float(v) for v in re.findall(r"(\d+(?:\.\d+)?)%", re.sub(r"\([^)]*\)", "", figures))]


def frame_columns(num_frames: int) -> List[int]:
    """t of the 'after t frames' columns: 1, 2, 4, ... up to T_L, and T_L."""
    ts, t = [], 1
    while t < num_frames:
        ts.append(t)
        t *= 2
    return ts + [num_frames]


def summary(values: List[Optional[float]]) -> Dict:
    """Mean, min, max of the seeds' values (None when any seed lacks it)."""
    if not values or any(v is None for v in values):
        return {"mean": None, "min": None, "max": None, "values": values}
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "values": values}


def row_result(row: Row, runs: List[Run]) -> Dict:
    """What the runs of one row give, per seed and summarised."""
    per_seed, times, columns, form, gflops = {}, {}, None, "frames", {}
    for run in runs:
        if row not in run.rows:
            continue
        trained = read_json(os.path.join(run.run_dir, "metrics.json"))
        if row.evaluated:
            found = read_json(os.path.join(run.run_dir, f"metrics_{row.slug}.json"))
            metrics = (found or {}).get("metrics")
            time_s = (found or {}).get("time_s")
        else:
            metrics = (trained or {}).get("final")
            time_s = (trained or {}).get("time_s")
        if not metrics:
            continue
        if "dynamics_ablation" in metrics:
            ablation = metrics["dynamics_ablation"]
            form, columns = "gflops", ablation["budgets"]
            per_seed[run.seed] = ablation["metric"]
            gflops[run.seed] = ablation["gflops"]
        elif "stage_scores" in metrics:
            stages = metrics["stage_scores"]
            columns = frame_columns(len(stages) - 1)
            per_seed[run.seed] = [stages[t] for t in columns]
        times[run.seed] = {"run": time_s, "training": (trained or {}).get("time_s") if row.evaluated else None}
    seeds = sorted(per_seed)
    cells = [summary([per_seed[s][i] for s in seeds]) for i in range(len(columns or []))]
    return {"table": row.table, "row": row.name, "label": row.label, "file": row.path, "paper": paper_figures(row.paper),
            "paper_line": row.paper, "form": form, "columns": columns, "seeds": seeds, "per_seed": per_seed,
            "cells": cells, "gflops": gflops, "time_s": times}


def cell_text(cell: Dict) -> str:
    if cell["mean"] is None:
        return "—"
    if len(cell["values"]) == 1:
        return f"{cell['mean']:.1f}"
    return f"{cell['mean']:.1f} ± {(cell['max'] - cell['min']) / 2:.1f}"


def markdown(results: List[Dict], seeds: Sequence[int]) -> str:
    lines = ["# Ablation tables", "",
             f"Mean over seeds {', '.join(map(str, seeds))} ± half the range (min to max); the paper's figures "
             "(ActivityNet, the paper's own budgets and frame counts) beside ours. Wall time: the run's (Table 10: "
             "the evaluation's, then the shared model's training), mean over seeds.", ""]
    for table in sorted({r["table"] for r in results}):
        rows = [r for r in results if r["table"] == table]
        columns = next((r["columns"] for r in rows if r["columns"]), [])
        form = next((r["form"] for r in rows if r["columns"]), "frames")
        heads = [f"{c:.3g} GFLOPs" for c in columns] if form == "gflops" else [f"t = {c}" for c in columns]
        metric = "metric at average GFLOPs/video" if form == "gflops" else "metric after t frames"
        lines += [f"## Table {table} ({metric})", "",
                  "| row | " + " | ".join(heads) + " | paper | wall time |",
                  "|---|" + "---|" * len(heads) + "---|---|"]
        for r in rows:
            cells = [cell_text(c) for c in r["cells"]] + ["—"] * (len(heads) - len(r["cells"]))
            paper = " / ".join(f"{v:g}" for v in r["paper"]) or "—"
            seeds_note = "" if [int(x) for x in r["seeds"]] == sorted(seeds) else (
                f"; seeds {', '.join(map(str, r['seeds']))}" if r["seeds"] else "; no finished run")
            lines.append(f"| {r['label']} (`{r['row']}`{seeds_note}) | " + " | ".join(cells) + f" | {paper} | {wall_text(r)} |")
        lines.append("")
    return "\n".join(lines)


def wall_text(result: Dict) -> str:
    def mean(key):
        values = [t[key] for t in result["time_s"].values() if t.get(key) is not None]
        return sum(values) / len(values) if values else None

    run, training = mean("run"), mean("training")
    if run is None:
        return "—"
    return f"{run:.0f} s" + (f" (+ {training:.0f} s training)" if training is not None else "")


def plot(path: str, results: List[Dict], table: int) -> None:
    """Metric against t (frames) or GFLOPs for every row of one table, with the seeds' min-max range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r["table"] == table and r["columns"]]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for r in rows:
        ok = [i for i, c in enumerate(r["cells"]) if c["mean"] is not None]
        if not ok:
            continue
        if r["form"] == "gflops":  # the GFLOPs the evaluation set actually spent, mean over seeds
            xs = [sum(r["gflops"][s][i] for s in r["seeds"]) / len(r["seeds"]) for i in ok]
        else:
            xs = [r["columns"][i] for i in ok]
        means = [r["cells"][i]["mean"] for i in ok]
        low = [r["cells"][i]["mean"] - r["cells"][i]["min"] for i in ok]
        high = [r["cells"][i]["max"] - r["cells"][i]["mean"] for i in ok]
        ax.errorbar(xs, means, yerr=[low, high], marker="o", markersize=4, capsize=3, label=r["label"])
    gflops = any(r["form"] == "gflops" for r in rows)
    ax.set_xlabel("GFLOPs / video" if gflops else "t (focus frames processed)")
    ax.set_ylabel("metric (%)")
    ax.set_title(f"Table {table}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def write_tables(out: str, rows: List[Row], runs: List[Run], seeds: Sequence[int]) -> List[str]:
    results = [row_result(row, runs) for row in rows]
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, "tables.md"), os.path.join(out, "tables.json")]
    write_text_atomic(paths[0], markdown(results, seeds))
    write_text_atomic(paths[1], json.dumps({"seeds": list(seeds), "rows": results}, indent=1, default=str))
    for table in sorted({r.table for r in rows}):
        paths.append(os.path.join(out, f"table{table}.png"))
        plot(paths[-1], results, table)
    return paths


# ------------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = get_args_parser().parse_args(own)
    if args.workers < 1:
        raise SystemExit(f"--workers must be positive, got {args.workers}")
    if args.base is not None and not os.path.isfile(args.base):
        raise SystemExit(f"--base {args.base}: configuration file not found")
    rows = find_rows(args.tables, args.rows, args.rows_dir)
    runs = plan_runs(rows, args.base, args.seeds, args.out)
    co = Coordinator()
    if co.world_size > 1 and args.workers > 1:
        raise SystemExit("--workers: under torchrun the runs go one at a time, each on every process")
    runner = Runner(args, extra, co)
    runner.count_steps(runs)
    if args.report_only and args.dry_run:
        raise SystemExit("--report_only and --dry_run: give one (--dry_run lists what would run, --report_only writes "
                         "the tables of what has run)")
    runner.say(f"{len(rows)} rows, {len(args.seeds)} seed(s): {len(runs)} trained models, "
               + (f"{runner.steps} step(s) left out (--report_only)" if args.report_only else
                  f"{runner.steps} step(s) to run ({'dry run' if args.dry_run else args.out})"))
    for row in rows:
        epochs = scaled_epochs(row, args.base)
        if epochs is not None and args.base is not None:
            runner.say(f"{row.name}: epochs {epochs['row']} of its preset's {epochs['row_base']} -> {epochs['epochs']} "
                       f"of --base's {epochs['base']}")
    try:
        if args.report_only:
            pass                                             # the tables of what is there
        elif args.workers == 1:
            for run in runs:
                runner.carry_out(run)
        else:
            with ThreadPoolExecutor(max_workers=args.workers) as pool:
                list(pool.map(runner.carry_out, runs))
        if co.is_main and not args.dry_run:
            for path in write_tables(args.out, rows, runs, args.seeds):
                print(f"wrote {path}", flush=True)
    finally:
        co.close()
    if runner.failures:
        raise SystemExit(f"{len(runner.failures)} step(s) failed; first: {runner.failures[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
