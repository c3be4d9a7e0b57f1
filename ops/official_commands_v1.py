"""AdaFocus V1's official command lines (Hydra ``key=value`` overrides of each script's YAML) as ours.

Both official trees of AdaFocus V1 run scripts that take ``key=value`` overrides instead of flags: the
ActivityNet / FCVID / Mini-Kinetics tree's ``main_dist.py train_stage=0..3`` (``conf/default.yaml``; the
``adafocus_v1`` variant) and the Something-Something tree's ``stage1.py``, ``stage2.py``, ``stage3.py``
(``conf/stage{N}.yaml``) and ``evaluate.py`` (``conf/evaluate.yaml``; the ``adafocus_v1_tsm`` variant).
:data:`HYDRA_KEYS` is the one mapping of every key onto our flags; :func:`translate_hydra` turns a command
into ours (``main.py --variant ... --stage N``), called by :func:`ops.official_commands.translate_command`,
which owns the script table, the launcher rules and the command-line tool.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .official_commands import (DATA_PLACEHOLDER, OfficialCommandError, OfficialScript, Translation, _given,
                                _launcher, _spawn_options, _visible_devices)


@dataclass(frozen=True)
class HydraKey:
    """One key of AdaFocus V1's official configuration and what it is here. ``kind``: ``value`` (``--flag
    VALUE``, ``flag`` by default ``--KEY``), ``bool`` (``--KEY`` or ``--no-KEY``), ``fixed`` (no flag here:
    one of ``allowed``, else refused with ``why``), ``dead`` (not read by the official script, or not in
    evaluation: any value, dropped), ``launcher`` (torchrun), ``special`` (:func:`_special_key`).
    ``default``: the official value where ours differs, used when the command leaves the key out."""

    key: str
    scripts: Tuple[str, ...]
    kind: str = "value"
    flag: str = ""
    allowed: Tuple[str, ...] = ()
    why: str = ""
    default: Optional[str] = None
    note: str = ""


#: The scripts of each tree: the ActivityNet tree's one script; the Something-Something tree's evaluation and
#: its three training stages (stage N in ``stageN.py``).
ACT, STH = ("main_dist.py",), ("evaluate.py",)
STH_STAGES = {"stage1.py": 1, "stage2.py": 2, "stage3.py": 3}
STH_TRAIN = tuple(STH_STAGES)
S1, S2, S3 = ("stage1.py",), ("stage2.py",), ("stage3.py",)


def _rows(kind: str, scripts: Tuple[str, ...], names: str, **fields) -> Tuple[HydraKey, ...]:
    return tuple(HydraKey(name, scripts, kind, **fields) for name in names.split())


_TRAINING = "a training setting; evaluate.py does not train"
_DEAD = "never read by the official code"
_FLOAT32 = "every stage trains in float32 here (the official stages 0, 1 and 3 under float16 autocast)"
_FLOAT32_STH = "every stage trains in float32 here (the official stage 1 under float16 autocast)"
#: The one mapping of AdaFocus V1's official keys (``conf/default.yaml`` of ``main_dist.py``,
#: ``conf/evaluate.yaml`` of ``evaluate.py``, ``conf/stage{N}.yaml`` of ``stage{N}.py``) onto our flags.
HYDRA_KEYS: Tuple[HydraKey, ...] = (
    _rows("special", ACT + STH + STH_TRAIN, "dataset")
    + _rows("special", ACT + STH, "resume")
    + _rows("special", ACT, "train_stage")
    + tuple(HydraKey("train_stage", (script,), "special", default=str(stage)) for script, stage in STH_STAGES.items())
    + _rows("special", ACT, "evaluate pretrained_glancer pretrained_focuser")
    + _rows("special", ACT + STH_TRAIN, "lr_steps")
    + (HydraKey("epochs", ACT, "special", default="50"), HydraKey("batch_size", ACT, "special", default="64"),
       HydraKey("random_patch", ACT, "special", default="false"))
    + _rows("special", STH + STH_TRAIN, "batch_size random_patch")
    + (HydraKey("epochs", STH_TRAIN, "special"), HydraKey("num_segments_focuser", STH + STH_TRAIN, "special"),
       HydraKey("pretrained", S2, "special"), HydraKey("pretrained_s2", S3, "special"))
    + (HydraKey("data_dir", ACT + STH + STH_TRAIN, default=DATA_PLACEHOLDER),)
    + _rows("value", ACT + STH + STH_TRAIN, "workers glance_size input_size seed print_freq hidden_state_dim")
    + (HydraKey("patch_size", ACT + STH, default="96"), HydraKey("patch_size", S1 + S2),
       HydraKey("patch_size", S3, default="160"), HydraKey("dropout", ACT, default="0.5"),
       HydraKey("dropout", STH + STH_TRAIN), HydraKey("eval_freq", ACT, default="5"),
       HydraKey("num_segments_glancer", STH + STH_TRAIN, flag="--num_glance_segments"),
       HydraKey("shift_div", STH + STH_TRAIN))
    + _rows("value", ACT, "num_segments backbone_lr fc_lr lr_type momentum weight_decay action_dim hidden_dim "
                          "reward gamma policy_lr")
    + _rows("value", STH_TRAIN, "eval_freq momentum weight_decay gamma policy_lr")
    + (HydraKey("backbone_lr", STH_TRAIN), HydraKey("fc_lr", S1, default="0.01"), HydraKey("fc_lr", S2 + S3),
       HydraKey("lr_type", S1 + S2), HydraKey("lr_type", S3, default="step"))
    + _rows("bool", ACT, "pretrain_glancer with_glancer")
    + (HydraKey("consensus", ACT, "fixed", allowed=("gru",), why="the linear classifier (consensus=fc) is not built; "
                "the recurrent one is consensus=gru"),
       HydraKey("policy_conv", ACT, "fixed", allowed=("true",), why="the MLP state encoder (policy_conv=false) is "
                "not built; the convolutional one is policy_conv=true"),
       HydraKey("feature_map_channels", ACT, "fixed", allowed=("1280",), why="the glance maps of MobileNetV2 have "
                "1280 channels"),
       HydraKey("amp", ACT, "fixed", allowed=("true", "false"), why="expected true or false", note=_FLOAT32),
       HydraKey("amp", STH_TRAIN, "fixed", allowed=("true", "false"), why="expected true or false", note=_FLOAT32_STH))
    + _rows("fixed", ACT, "train_list val_list root_path", allowed=("",),
            why="the list files and frames are found under data_dir here (--data_dir)")
    + _rows("fixed", ACT, "partial_fcvid_eval ada_reso_skip reso_list random_crop center_crop ada_crop_list "
                          "rescale_to policy_input_offset save_meta",
            why="a data-set option the official code leaves inert at its default; not offered here (drop it)")
    + _rows("dead", ACT, "continuous arch k clip_grad npb penalty gpus", why=_DEAD)
    + (HydraKey("num_classes", ACT + STH + STH_TRAIN, "dead", why="the class count comes from the data set"),)
    + _rows("launcher", ACT + STH + STH_TRAIN,
            "multiprocessing_distributed distributed dist_url dist_backend world_size rank gpu")
    + (HydraKey("video_div", STH + STH_TRAIN, "fixed", allowed=("1",), why="one policy step per video is built "
                "(video_div=1, the README's); several are not"),
       HydraKey("ppo_continuous", STH, "fixed", allowed=("true",), default="false", why="main.py builds the "
                "README's Gaussian policy (ppo_continuous=True); the grid policy is built in models.adafocus_v1_sth"),
       HydraKey("ppo_continuous", S2 + S3, "fixed", allowed=("true",), why="main.py builds the README's Gaussian "
                "policy (ppo_continuous=True); the grid policy is built in models.adafocus_v1_sth"),
       HydraKey("ppo_continuous", S1, "dead", why="stage 1 trains on random boxes: no policy acts"),
       HydraKey("actorcritic_with_bn", STH + STH_TRAIN, "fixed", allowed=("true",), why="main.py builds the README's "
                "policy encoder with BatchNorm (actorcritic_with_bn=True); the one without is built in "
                "models.adafocus_v1_sth"),
       HydraKey("with_glancer", STH + STH_TRAIN, "fixed", allowed=("true",), why="the prediction adds the glance "
                "logits here (with_glancer=True, the README's)"),
       HydraKey("base_model", STH + STH_TRAIN, "fixed", allowed=("resnet50",), why="the focus network is ResNet-50"),
       HydraKey("is_shift", STH + STH_TRAIN, "fixed", allowed=("true",), why="both networks shift (is_shift=true)"),
       HydraKey("shift_place", STH + STH_TRAIN, "fixed", allowed=("blockres",), why="the shift sits on the residual "
                "branch (shift_place=blockres)"))
    + _rows("fixed", STH + STH_TRAIN, "partial_bn temporal_pool non_local", allowed=("false",),
            why="not built (the official configuration's false)")
    + _rows("dead", STH, "train_stage", why="evaluate.py ignores it")
    + (HydraKey("evaluate", STH, "fixed", allowed=("true",), why="evaluate.py evaluates (evaluate=True)"),
       HydraKey("evaluate", STH_TRAIN, "fixed", allowed=("false",), why="the training scripts train here; the "
                "evaluation is evaluate.py's (main.py --variant adafocus_v1_tsm --evaluate --resume CKPT)"))
    + _rows("dead", STH + S1 + S3, "action_std", why="no policy samples (stage 1: random boxes; stage 3 and the "
                                                     "evaluation: the Gaussian's mean)")
    + (HydraKey("action_std", S2, "fixed", allowed=("0.25",), default="0.1", why="the Gaussian policy's standard "
                "deviation is the README's 0.25 here (the model's)"),)
    + _rows("dead", STH + STH_TRAIN, "action_dim", why="the grid policy's size; the Gaussian policy has none")
    + _rows("dead", STH, "policy_lr gamma epochs eval_freq start_eval backbone_lr fc_lr fc_lr5 lr_type lr_steps "
                         "momentum weight_decay amp", why=_TRAINING)
    + _rows("dead", STH + STH_TRAIN, "pretrain consensus reward dropout_lstm penalty hidden_dim k npb clip_grad "
                                     "pretrain_glancer", why=_DEAD)
    + (HydraKey("fc_lr5", STH_TRAIN, "dead", why="the official optimiser ignores the rate multipliers"),
       HydraKey("start_eval", STH_TRAIN, "fixed", allowed=("0",), why="validation runs every --eval_freq epochs "
                "from the first here (start_eval=0, the README's)"),
       HydraKey("load_pretrained_focuser_fc", S1, "fixed", allowed=("false",), why="stage 1 starts the classifier "
                "fresh here (load_pretrained_focuser_fc=False, the README's: the focuser file's new_fc is not read)"),
       HydraKey("load_pretrained_s2_fc", S3, "fixed", allowed=("true",), why="stage 3 takes the stage-2 "
                "checkpoint's classifier here (load_pretrained_s2_fc=True, the README's)"))
    # stage1.py: the TSM repository's pre-trained encoder files, read as the official stage 1 reads them
    + (HydraKey("pretrained_glancer", S1, flag="--glance_weights"),
       HydraKey("pretrained_focuser", S1, flag="--focus_weights"))
)
#: Each script's own YAML (Hydra's --config-name).
HYDRA_CONFIGS = {"main_dist.py": "default", "evaluate.py": "evaluate", "stage1.py": "stage1", "stage2.py": "stage2",
                 "stage3.py": "stage3"}
#: Whether each script starts one process per GPU (multiprocessing_distributed) by default.
HYDRA_SPAWN = {"main_dist.py": "true", "evaluate.py": "false", "stage1.py": "true", "stage2.py": "false",
               "stage3.py": "true"}
#: The official data set names of each script, and ours.
_STH_DATASETS = {"somethingv1": "something", "somethingv2": "somethingv2"}
V1_DATASETS = {"main_dist.py": {"actnet": "actnet", "fcvid": "fcvid", "minik": "minik"}, "evaluate.py": _STH_DATASETS,
               **{script: _STH_DATASETS for script in STH_TRAIN}}
#: The :data:`HYDRA_KEYS` rows of each script, by key.
HYDRA_BY_SCRIPT = {script: {row.key: row for row in HYDRA_KEYS if script in row.scripts}
                   for script in ACT + STH + STH_TRAIN}


def _truth(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise OfficialCommandError(f"{key}={value}: expected true or false")
    return value.lower() == "true"


def _int(key: str, value: str) -> int:
    if not re.fullmatch(r"[0-9]+", value):
        raise OfficialCommandError(f"{key}={value}: expected a whole number")
    return int(value)
def hydra_values(script: OfficialScript, args: Sequence[str]) -> Tuple[dict, set]:
    """The ``key=value`` overrides of a V1 command, checked against the script's keys (an unknown key is
    refused naming the closest known one), with the official defaults that differ from ours added; and the
    keys so added."""
    keys, values, i = HYDRA_BY_SCRIPT[script.name], {}, 0
    while i < len(args):
        token = args[i]
        if token in ("--config-name", "-cn") or token.startswith("--config-name="):
            name = token.split("=", 1)[1] if "=" in token else (args[i + 1] if i + 1 < len(args) else "")
            i += 0 if "=" in token else 1
            if name.removesuffix(".yaml") != HYDRA_CONFIGS[script.name]:
                raise OfficialCommandError(f"--config-name {name}: {script.name} reads conf/"
                                           f"{HYDRA_CONFIGS[script.name]}.yaml")
        elif "=" in token and not token.startswith("-"):
            key, value = token.lstrip("+").split("=", 1)
            if key not in keys:
                closest = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.0)
                raise OfficialCommandError(f"{script.name}: unknown key {key!r} (the closest known key: {closest[0]})")
            values[key] = value
        else:
            raise OfficialCommandError(f"{script.name}: {token!r} is not a key=value override (the official "
                                       f"{script.name} takes Hydra key=value arguments, e.g. patch_size=128)")
        i += 1
    defaults = {row.key: row.default for row in keys.values() if row.default is not None and row.key not in values}
    if "dataset" not in values:
        defaults["dataset"] = next(iter(V1_DATASETS[script.name]))
    return {**values, **defaults}, set(defaults)


def _special_key(key: str, value: str, script: str, stage: Optional[int], evaluate: bool) -> List[str]:
    """Our flags for the :data:`HYDRA_KEYS` of kind ``special``."""
    if key == "dataset":
        if value not in V1_DATASETS[script]:
            raise OfficialCommandError(f"dataset={value}: {script} reads {', '.join(V1_DATASETS[script])}")
        return ["--dataset", V1_DATASETS[script][value]]
    if key == "train_stage":
        if script in STH_STAGES and _int(key, value) != stage:
            raise OfficialCommandError(f"train_stage={value}: {script} trains stage {stage} (it asserts its own "
                                       f"train_stage; stage N is stage{{N}}.py)")
        return [] if evaluate else ["--stage", str(stage)]
    if key in ("pretrained", "pretrained_s2"):  # the Something-Something stages 2 and 3: the previous stage's run
        return ["--stage_checkpoint", value]
    if key == "evaluate":
        return ["--evaluate"] if evaluate else []
    if key == "resume":
        if evaluate or script == "evaluate.py":
            return ["--resume", value]
        if stage in (0, 1):
            raise OfficialCommandError(f"resume={value} with train_stage={stage}: the official resume is the previous "
                                       "stage's checkpoint of stages 2 and 3; stage 1 starts from pretrained_glancer / "
                                       "pretrained_focuser (our --resume continues a run of the same stage)")
        return ["--stage_checkpoint", value]
    if key in ("pretrained_glancer", "pretrained_focuser"):
        if stage != 1 or evaluate:
            raise OfficialCommandError(f"{key}: the stage-0 checkpoint that train_stage=1 starts from (read by no "
                                       "other stage)")
        return []  # both in one --stage_checkpoint (translate_hydra)
    if key == "random_patch":
        training = script != "evaluate.py" and not evaluate
        given, wanted = _truth(key, value), {1: True, 2: False, 3: False}.get(stage) if training else False
        if wanted is not None and given != wanted:
            raise OfficialCommandError(f"random_patch={value} with {f'train_stage={stage}' if training else 'the evaluation'}"
                                       ": here stages 0 and 1 train on random patches and stages 2, 3 and the "
                                       "evaluation use the policy's (the README's settings)")
        return []
    if key == "batch_size":
        return ["--val_batch_size" if evaluate or script == "evaluate.py" else "--batch_size", value]
    if key == "epochs":
        return ["--epochs", str(_int(key, value) + 1), "--lr_epochs", value]
    if key == "lr_steps":
        return ["--lr_steps"] + [s.strip() for s in value.strip("[]").split(",") if s.strip()]
    if key == "num_segments_focuser":
        return ["--num_segments", value, "--num_focus_segments", value]
    raise AssertionError(key)


def translate_hydra(script: OfficialScript, args: Sequence[str], env: List[str],
                    launcher_options: Optional[List[str]]) -> Translation:
    """An AdaFocus V1 command (``key=value`` overrides) as ours: each key through :data:`HYDRA_KEYS`;
    ``multiprocessing_distributed`` (and its ``dist_url``, ``world_size``, ``rank``) become torchrun."""
    (values, defaulted), keys = hydra_values(script, args), HYDRA_BY_SCRIPT[script.name]
    evaluate = script.name == "evaluate.py" or script.name in ACT and _truth("evaluate", values.get("evaluate", "false"))
    stage = STH_STAGES.get(script.name)
    if script.name in ACT and "train_stage" in values:
        stage = _int("train_stage", values["train_stage"])
    if script.name in ACT and not evaluate and stage not in (0, 1, 2, 3):
        raise OfficialCommandError(f"train_stage={values.get('train_stage', '')}: {script.name} trains "
                                   "train_stage=0, 1, 2 or 3 (or evaluates: evaluate=true resume=CKPT)")
    ours, notes, launch, dropped = [], [], {}, []
    for key, value in values.items():
        row = keys[key]
        try:
            if row.kind == "value":
                ours += [row.flag or f"--{key}", value]
            elif row.kind == "bool":
                ours.append(f"--{'' if _truth(key, value) else 'no-'}{key}")
            elif row.kind == "fixed" and value.lower() not in row.allowed:
                raise OfficialCommandError(f"{key}={value}: {row.why}")
            elif row.kind == "dead":
                dropped.append(f"{key} ({row.why})")
            elif row.kind == "launcher":
                launch[key] = value
            elif row.kind == "special":
                ours += _special_key(key, value, script.name, stage, evaluate)
        except OfficialCommandError as exc:
            if key in defaulted:
                raise OfficialCommandError(f"{key} not given: the official configuration's {key}={value}; {exc}") from None
            raise
        if row.note:
            notes.append(f"{key}={value}: {row.note}")
    checkpoints = [values[k] for k in ("pretrained_glancer", "pretrained_focuser") if k in values and script.name in ACT]
    if checkpoints:
        ours += ["--stage_checkpoint"] + checkpoints
    for extra in script.adds:
        if not _given(ours, extra[0]):
            ours += list(extra)
    if "epochs" in values and not evaluate:
        notes.append(f"epochs={values['epochs']}: the official loop runs epochs + 1 epochs, the last at rate 0")
    if dropped:
        notes.append("dropped: " + "; ".join(dropped))
    if launcher_options is None:
        if _truth("multiprocessing_distributed", launch.get("multiprocessing_distributed", HYDRA_SPAWN[script.name])):
            launcher_options = _spawn_options(env, launch)
            notes.append("multiprocessing_distributed and its dist_url, world_size, rank: torchrun starts the "
                         "processes here")
        elif (_visible_devices(env) or 1) > 1:
            launcher_options = [f"--nproc_per_node={_visible_devices(env)}"]
            notes.append(f"{script.name} without multiprocessing_distributed spreads each batch over the visible "
                         "GPUs in one process: torchrun starts one process per GPU here, same global batch")
    return Translation(env, _launcher(launcher_options), script.ours, ours, script, notes)


