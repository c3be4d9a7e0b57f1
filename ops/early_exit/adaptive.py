"""Adaptive early-exit inference: run the focus steps incrementally and drop videos as they exit.

The post-hoc simulation (:func:`.evaluation.evaluate_exits`) runs the full network, scores all K exit stages
(``models.uni_adafocus_outputs.stage_logits``: T_L + 1, or T_L without the glance exit) and picks each video's
first confident stage. This runtime gets the same predictions while doing only the work each video needs (see
docs/official-behaviour.md, "Early exit"; the FLOPs table of ``models.flops`` charges exactly this work):

* **stage 0** — the glance encoder on all T_G frames of every video, the glance MLP and its running
  maximum, and the *last* glance exit only (no glance head, no other glance exits, no auxiliary
  head). Criterion, decision; exited videos leave the batch. A model without the glance exit
  (``exits_at_glance`` False: trained without ``--reuse_glance_features``, its glance exits give every
  video the same logits) offers none: its K = T_L stages are the focus steps below, its stage 0 the
  first focus frame, and the policy runs for every video.
* **policy** — once, for the videos still running: the spatial and temporal policies and the focus
  frame selection.
* **stage k = 1..T_L** — for the videos still running only: crop the patch of their k-th focus frame
  (one crop call for all of them), run the focus encoder on those patches (one batched call), continue
  each video's running-max focus state (:meth:`ExitClassifier.focus_states` with ``previous``), run
  focus exit head k-1. Criterion, decision; exited videos leave the batch. Everybody leaves at the
  last stage (its threshold is -1e8).

Exactness: the classifier's state after k focus steps is a running maximum of per-step embeddings
and focus exit k-1 reads only that state and the final glance state, so a video that stops after k
steps gets the logits of exit k of the full pass. The criterion is :func:`.criteria.exit_scores`
and the decision :func:`.solver.assign_exits`, the post-hoc functions themselves. In floating
point the batched kernels (GEMM, convolution) may round differently for a different number of rows,
so the logits agree with the full pass to rounding (~1e-6 relative, not always bit for bit) and an
exit differs only if a score lies within that rounding of its threshold.

Use::

    runner = AdaptiveRunner(model.eval(), thresholds, criterion="entropy")   # or a thresholds file
    result = runner.run(video)          # result.logits (B, C), result.exit_stage (B,), result.gflops (B,)

On a CPU, give it the inference copy (``models.inference.evaluation_model`` /
``prepare_for_inference``: the same frames and patches, the same logits to rounding, faster); it
counts the same FLOPs as the original model. ``scripts/predict.py`` and ``scripts/bench_adaptive.py``
count them on the original model once and pass them as ``flops=``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Union

import torch

from ..packages import models
from .criteria import check_criterion, exit_scores
from .solver import assign_exits
from .thresholds_file import ThresholdsFile, load_thresholds


__all__ = ["AdaptiveResult", "AdaptiveRunner"]

ThresholdsLike = Union[torch.Tensor, Sequence[float], ThresholdsFile, str, os.PathLike]


@dataclass
class AdaptiveResult:
    """What :meth:`AdaptiveRunner.run` produced for a batch of B videos."""

    logits: torch.Tensor  # (B, C) float32 logits of each video's exit stage (on the model's device)
    exit_stage: torch.Tensor  # (B,) int64 (CPU): stage k after model.exit_focus_frames[k] focus frames
    gflops: torch.Tensor  # (B,) float64 (CPU): the FLOPs table entry of each video's exit stage
    scores: torch.Tensor  # (B,) (CPU) criterion score at each video's exit stage
    stage_batch_sizes: List[int]  # (K,) videos processed at each stage (0 for stages nobody reached)
    stage_seconds: Optional[List[float]] = None  # (K,) wall time per stage when timed (policy: first focus stage)
    policy_seconds: Optional[float] = None  # wall time of the policy (part of the first focus stage) when timed
    num_stages: int = field(default=0)

    @property
    def exit_counts(self) -> torch.Tensor:
        """(K,) int64 videos that exited at each stage."""
        return torch.bincount(self.exit_stage, minlength=self.num_stages)


def _thresholds_and_criterion(thresholds: ThresholdsLike, criterion: Optional[str]):
    if isinstance(thresholds, (str, os.PathLike)):
        thresholds = load_thresholds(thresholds)
    if isinstance(thresholds, ThresholdsFile):
        if criterion is not None and criterion != thresholds.criterion:
            raise ValueError(f"criterion {criterion!r} given, but the thresholds file was fitted for "
                             f"{thresholds.criterion!r}")
        return thresholds.thresholds, thresholds.criterion
    thr = torch.as_tensor(thresholds).detach().cpu().reshape(-1)
    if not thr.is_floating_point():
        thr = thr.double()
    return thr, criterion if criterion is not None else "confidence"


class AdaptiveRunner:
    """Early-exit inference that stops computing for a video as soon as it exits.

    model: a :class:`models.UniAdaFocus` in eval mode. thresholds: (K,) per-stage thresholds (K =
    ``model.num_exit_stages``: T_L + 1, or T_L without the glance exit; the last one should be -1e8, but
    everybody leaves at the last stage regardless), a :class:`.thresholds_file.ThresholdsFile` or the path of
    a thresholds file (its criterion is used; a different explicit ``criterion`` is an error). criterion:
    ``'confidence'`` | ``'entropy'`` | ``'max_prob'`` (default ``'confidence'``). flops: GFLOPs of each stage
    (K,), by default the model's measured table (its variant's FLOPs accounting,
    ``models.variant_of(model).flops``, counted once here).
    """

    def __init__(self, model, thresholds: ThresholdsLike, criterion: Optional[str] = None,
                 flops: Optional[Sequence[float]] = None):
        self.model = model
        self.num_stages = model.num_exit_stages
        self.thresholds, self.criterion = _thresholds_and_criterion(thresholds, criterion)
        check_criterion(self.criterion)
        if self.thresholds.numel() != self.num_stages:
            raise ValueError(f"{self.thresholds.numel()} thresholds for {self.num_stages} stages "
                             f"({models.variant_of(model).exits})")
        if flops is None:
            flops = models.variant_of(model).flops(model).stages()
        self.flops = torch.tensor([float(f) for f in flops], dtype=torch.float64)
        if self.flops.numel() != self.num_stages:
            raise ValueError(f"{self.flops.numel()} FLOPs values for {self.num_stages} stages")

    # ------------------------------------------------------------------------------------------
    def _exiting(self, logits: torch.Tensor, stage: int, rows: torch.Tensor,
                 forced: Optional[torch.Tensor]):
        """Scores (n,) and exit decisions (n,) bool, both CPU, for the videos ``rows`` at ``stage``."""
        scores = exit_scores(logits.detach().float().cpu().unsqueeze(1), self.criterion)  # (n, 1)
        if forced is not None:
            exiting = forced[rows] == stage
        elif stage == self.num_stages - 1:
            exiting = torch.ones(rows.numel(), dtype=torch.bool)
        else:
            # The post-hoc decision itself: a video leaves at column 0 iff its score reaches the
            # stage's threshold (column 1 stands for "later" and accepts everybody).
            pair = torch.cat((scores, torch.zeros_like(scores)), dim=1)
            exiting = assign_exits(pair, self.thresholds[[stage, -1]]) == 0
        return scores[:, 0], exiting

    @torch.no_grad()
    def run(self, video: torch.Tensor, forced_exits: Optional[torch.Tensor] = None, timing: bool = False,
            glance: Optional[torch.Tensor] = None, before_focus=None) -> AdaptiveResult:
        """Classify a batch with early exits.

        video: (B, T0, 3, H, W) or (B, T0*3, H, W), as the model's forward takes it (uint8 or
        normalised float; autocast of the caller applies to the backbones, as in forward); glance: the
        separately sampled glance frames of a variant that has them (tsm), else None.
        forced_exits: optional (B,) stage per video that overrides the thresholds (benchmarks: it
        makes the exit distribution independent of the weights; criteria are still computed, so the
        work is the same). timing: record the wall time of every stage (synchronising the device).
        before_focus: the model's hook for frames left undecoded (variants whose glance frames are among
        the candidates): called before every focus step with the step's frames (n, 1) and the rows (n,)
        of ``video`` still running, e.g. ``datasets.FrameFeed`` batches' ``require``, so that a video
        that leaves after k steps has k focus frames decoded (one at a time, the one the step reads).
        """
        model = self.model
        if model.training:
            raise RuntimeError("AdaptiveRunner needs the model in eval mode (model.eval())")
        b = video.shape[0]
        if forced_exits is not None:
            forced_exits = torch.as_tensor(forced_exits).long().cpu().reshape(-1)
            if forced_exits.numel() != b or (forced_exits.numel() and (
                    int(forced_exits.min()) < 0 or int(forced_exits.max()) >= self.num_stages)):
                raise ValueError(f"forced_exits must be {b} stages in [0, {self.num_stages})")
        device_type = video.device.type
        amp = torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
        extra = {} if glance is None else {"glance": glance}
        if before_focus is not None:
            extra["before_focus"] = before_focus
        with torch.autocast(device_type, enabled=False):
            return self._run(video, extra, amp, forced_exits, timing)

    def _run(self, video: torch.Tensor, extra, amp, forced: Optional[torch.Tensor], timing: bool) -> AdaptiveResult:
        """Drive the model's ``early_exit_steps``: decide after every stage, send on those who stay."""
        model, device = self.model, video.device
        b, k_stages = video.shape[0], self.num_stages
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        seconds = [0.0] * k_stages if timing else None
        laps = {}
        batch_sizes = [0] * k_stages
        out_logits = torch.empty(b, model.num_classes, device=device)
        exit_stage = torch.full((b,), k_stages - 1, dtype=torch.long)
        out_scores = torch.empty(b)
        rows = torch.arange(b)  # CPU: original batch positions of the videos still running
        rows_dev = rows.to(device)

        def lap(name: str) -> None:
            if timing:
                sync()
                laps[name] = time.perf_counter() - started

        started = time.perf_counter()
        steps = model.early_exit_steps(video, amp, lap=lap, **extra)
        logits = next(steps)
        for stage in range(k_stages):
            batch_sizes[stage] = rows.numel()
            scores, exiting = self._exiting(logits, stage, rows, forced)
            leaving = exiting.nonzero().squeeze(1)
            if leaving.numel():
                out_logits[rows_dev[leaving.to(device)]] = logits[leaving.to(device)]
                exit_stage[rows[leaving]] = stage
                out_scores[rows[leaving]] = scores[leaving]
            keep = (~exiting).nonzero().squeeze(1)
            if timing:
                sync()
                seconds[stage] = time.perf_counter() - started
            if not keep.numel() or stage == k_stages - 1:
                break
            started = time.perf_counter()
            rows, rows_dev = rows[keep], rows_dev[keep.to(device)]
            logits = steps.send(keep.to(device))
        steps.close()
        return AdaptiveResult(logits=out_logits, exit_stage=exit_stage, gflops=self.flops[exit_stage],
                              scores=out_scores, stage_batch_sizes=batch_sizes, stage_seconds=seconds,
                              policy_seconds=laps.get("policy") if timing else None, num_stages=k_stages)
