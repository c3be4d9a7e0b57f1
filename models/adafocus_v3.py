"""AdaFocusV3 (ECCV 2022): spatial-temporal dynamic computation with video cubes (docs/adafocus-v3.md).

AdaFocusV3 has no released code; this module follows the paper (§3, App. A, C). For a video of T frames:

1. **glance** — the glance encoder sees T_G evenly spaced frames (``num_glance_segments``, the family's
   rule ``models.frame_selection.glance_frame_indices``; all T by default, paper §3.2: "all the frames of
   V are fed into f_G at the same time"): feature maps
   (B, T_G, Dg, h, w) and pooled features (B, T_G, Dg).
2. **policy** — :class:`CubePolicy`, not recurrent: it reads the glance maps of the whole video at once
   and gives the centres of all K cubes (``num_focus_segments``) together, (B, K, 3) as ``(x, y, z)`` in
   (0, 1). A cube is H' x W' x T' (``patch_size`` squared, ``cube_frames``): its top-left corner is
   ``x (W - P)``, ``y (H - P)`` pixels and its first frame ``z (T - T')`` (continuous).
3. **focus** — the focus encoder (a ResNet; with ``tsm_encoders`` shifted over the cube's frames) on
   each cube; a cube's feature is the mean of its feature map over H_f x W_f x T_f.
4. **classifier** — the family's :class:`models.classifier.ExitClassifier` with one glance exit: p0 from
   the running maximum over the glance frames (the glance step, §3.4), then p_k after cube k from the
   running maximum over the cubes next to the glance state (feature reuse). K + 1 exits in all.

**Training** (§3.3) moves the cubes with one of two gradient estimators (``gradient``):

* ``'pixel'`` (AdaFocusV2's, Eqs. 2-4): every cube pixel is a trilinear sample of the video (bilinear in
  the frame, linear between the two neighbouring frames), so the loss reaches the centres through the
  pixels;
* ``'feature'`` (AdaFocusV3's, Eqs. 5-6): a cube enlarged by one feature cell along every axis
  ((P + s) squared x (T' + 1) whole frames, s the focus encoder's stride) is cropped without gradient
  for its position; its feature map e' ((H_f + 1) x (W_f + 1) x (T_f + 1)) is read by trilinear
  interpolation at ``c - stopgrad(c) + o``, so the forward value is the map at the cube's place
  (the half-cell centre in space, the cube's fractional frame offset in time) and the gradient for the
  centre c comes through the feature map.

**Inference** (§4.1) crops whole frames: cube k covers the T'-frame window nearest its start that still
holds an uncovered frame, and processes only its uncovered frames, so no frame is processed twice (with
T' = 1 every cube is a new frame). :meth:`AdaFocusV3.early_exit_steps` runs the cubes one at a time for
the adaptive runtime. Training cubes may overlap (the paper removes covered frames at inference only).

This module also registers the variant (hyper-parameters, FLOPs per exit: :mod:`.adafocus_v3_flops`, the
paper's objective Eq. 1: :mod:`.adafocus_v3_objective`); the cube geometry is :mod:`.adafocus_v3_cubes`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from .adafocus_v2 import ResNetGlanceEncoder
from .adafocus_v3_cubes import inference_windows, shift_segments, trilinear_read
from .adafocus_v3_flops import adafocus_v3_flops
from .adafocus_v3_objective import AdaFocusV3Output, build_objective
from .backbones import FOCUS_ARCHS, GlanceEncoder, glance_feature_size
from .classifier import ExitClassifier
from .frame_selection import glance_frame_indices
from .patches import sample_boxes
from .temporal_shift import shift_mobilenet_v2, shift_resnet
from .uni_adafocus import IMAGENET_MEAN, IMAGENET_STD, normalise_uint8, video_frames
from .variants import CheckpointLayout, Variant, register_variant

#: The gradient estimators of the cube centres (paper §3.3).
GRADIENTS = ("feature", "pixel")
#: Output stride of the focus ResNets: the enlarged cube adds one feature cell, this many pixels.
FOCUS_STRIDE = 32
#: Output channels of the policy's 1x1 convolution over the stacked glance maps.
POLICY_CONV_CHANNELS = 64


# --------------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------------
class CubePolicy(nn.Module):
    """Glance maps of the whole video (B, G, C, h, w) -> K cube centres (B, K, 3) ``(x, y, z)`` in (0, 1).

    ``layers``: Conv2d 1x1 over the maps stacked frame-major along the channels (G*C -> 64, no bias), BN,
    Tanh, Flatten (64 h w), Linear (-> H), BN, Tanh, Linear (-> 3K), Sigmoid. The last layer starts with
    zero weights and biases that place the cubes at the frame centre and evenly over the video in time
    (z_k = (k + 0.5) / K), so that training starts from K distinct cubes.
    """

    def __init__(self, in_channels: int, num_frames: int, feature_size: int, hidden_dim: int, num_cubes: int):
        super().__init__()
        self.num_cubes = num_cubes
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels * num_frames, POLICY_CONV_CHANNELS, kernel_size=1, bias=False),
            nn.BatchNorm2d(POLICY_CONV_CHANNELS),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(POLICY_CONV_CHANNELS * feature_size * feature_size, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.Tanh(),
            nn.Linear(hidden_dim, 3 * num_cubes),
            nn.Sigmoid(),
        )
        last = self.layers[-2]
        nn.init.zeros_(last.weight)
        with torch.no_grad():
            z = torch.tensor([(k + 0.5) / num_cubes for k in range(num_cubes)])
            bias = torch.zeros(num_cubes, 3)
            bias[:, 2] = torch.log(z / (1 - z))
            last.bias.copy_(bias.flatten())

    def forward(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """feature_maps (B, G, C, h, w) -> centres (B, K, 3)."""
        return self.layers(feature_maps.flatten(1, 2)).view(-1, self.num_cubes, 3)


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------
class AdaFocusV3(nn.Module):
    """The AdaFocusV3 network. Keyword names match the command-line flags.

    forward(video, generator=None, before_focus=None) with video (B, T, 3, H, W) or (B, 3T, H, W) in
    temporal order, H = W = input_size; uint8 frames are normalised here (ImageNet mean / std), floating
    frames are taken as normalised. Returns :class:`AdaFocusV3Output`. ``generator`` is unused (the
    training forward draws no random numbers besides dropout). In evaluation, ``before_focus(indices (B, n),
    None)`` is called with the frames the cubes read (each video's, padded with its first) before any is
    read (the family's hook for deferred decoding; the glance frames come decoded).

    ``num_focus_segments``: K, the number of cubes; ``patch_size``: H' = W'; ``cube_frames``: T';
    ``gradient``: ``'feature'`` or ``'pixel'`` (module docstring); ``tsm_encoders``: temporal shift in both
    encoders (over the T_G glance frames and over each cube's frames; the paper's Sth-Sth form);
    ``stn_hidden_dim``: the policy's width H; ``classifier_dim``: the exit classifier's MLP width.
    """

    variant = "adafocus_v3"

    def __init__(self, num_classes: int, num_segments: int = 18, num_glance_segments: Optional[int] = None,
                 num_focus_segments: int = 18, cube_frames: int = 1, patch_size: int = 128, input_size: int = 224,
                 glance_arch: str = "mbv2", focus_arch: str = "resnet50", stn_hidden_dim: int = 1024,
                 classifier_dim: int = 4096, dropout: float = 0.2, v3_gradient: str = "feature",
                 tsm_encoders: bool = False, shift_div: int = 8, pretrained: bool = False,
                 glance_weights: Optional[str] = None, focus_weights: Optional[str] = None,
                 zero_init_residual: bool = False):
        super().__init__()
        num_glance_segments = num_glance_segments or num_segments
        if v3_gradient not in GRADIENTS:
            raise ValueError(f"--v3_gradient must be one of {GRADIENTS}, got {v3_gradient!r}")
        if not 1 <= cube_frames < num_segments:
            raise ValueError(f"--cube_frames {cube_frames} must be in 1..num_segments - 1 ({num_segments - 1}): "
                             "a cube is shorter than the video")
        if num_focus_segments < 1 or cube_frames + num_focus_segments - 1 > num_segments:
            raise ValueError(f"--num_focus_segments {num_focus_segments} (cubes) with --cube_frames {cube_frames}: "
                             f"at inference every cube needs a new frame, so T' + K - 1 must not exceed "
                             f"--num_segments {num_segments}")
        if num_glance_segments > num_segments:
            raise ValueError(f"--num_glance_segments {num_glance_segments} must not exceed --num_segments {num_segments}")
        if not 0 < patch_size < input_size:
            raise ValueError(f"--patch_size {patch_size} must be in 1..input_size - 1 ({input_size - 1})")
        if v3_gradient == "feature" and patch_size % FOCUS_STRIDE:
            raise ValueError(f"--v3_gradient feature: --patch_size {patch_size} must be a multiple of the focus "
                             f"encoder's stride {FOCUS_STRIDE} (the enlarged cube adds one feature cell)")
        self.num_classes, self.num_segments, self.num_glance = num_classes, num_segments, num_glance_segments
        self.num_cubes, self.cube_frames, self.patch_size, self.input_size = (num_focus_segments, cube_frames,
                                                                              patch_size, input_size)
        self.gradient, self.tsm_encoders = v3_gradient, tsm_encoders
        self.feature_size = glance_feature_size(input_size)
        self.register_buffer("glance_frames", glance_frame_indices(num_segments, num_glance_segments)[0],
                             persistent=False)  # the family's evaluation rule, in training too
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)
        self.glance = GlanceEncoder(glance_arch, pretrained=pretrained, weights=glance_weights,
                                    zero_init_residual=zero_init_residual)
        # the focus ResNet returns its last map too (the feature estimator reads it)
        self.focus = ResNetGlanceEncoder(focus_arch, pretrained=pretrained, weights=focus_weights,
                                         zero_init_residual=zero_init_residual)
        if tsm_encoders:
            shift_mobilenet_v2(self.glance.features, num_glance_segments, shift_div)
            shift_resnet(self.focus, cube_frames, shift_div)
        glance_dim, focus_dim = self.glance.feature_dim, self.focus.feature_dim
        self.policy = nn.Module()  # the family's policy container (optimiser group spatial_policy)
        self.policy.spatial = CubePolicy(glance_dim, num_glance_segments, self.feature_size, stn_hidden_dim,
                                         num_focus_segments)
        self.classifier = ExitClassifier(glance_dim, focus_dim, 1, num_focus_segments, num_classes,
                                         classifier_dim, dropout)

    # ------------------------------------------------------------------------------------------
    # inputs and geometry
    # ------------------------------------------------------------------------------------------
    def frames_of(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) or (B, 3T, H, W) -> (B, T, 3, H, W), checked (not normalised: frames are normalised
        when they are read, after ``before_focus`` has completed them)."""
        return video_frames(video, self.num_segments, self.input_size)

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (..., 3, H, W) -> normalised float32; floating frames pass through."""
        return normalise_uint8(frames, self.pixel_mean, self.pixel_std)

    def corners(self, centres: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """centres (..., 3) -> (x1, y1, first frame), each (...): continuous pixels and frames."""
        span = float(self.input_size - self.patch_size)
        return (centres[..., 0] * span, centres[..., 1] * span,
                centres[..., 2] * float(self.num_segments - self.cube_frames))

    def boxes(self, centres: torch.Tensor) -> torch.Tensor:
        """centres (..., 3) -> boxes (..., 4) (x1, y1, x2, y2) in input pixels."""
        x1, y1, _ = self.corners(centres)
        return torch.stack((x1, y1, x1 + self.patch_size, y1 + self.patch_size), dim=-1)

    def crop(self, frames: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor, extent: int) -> torch.Tensor:
        """Square boxes of ``extent`` pixels at top-left (x1, y1), sampled on ``extent`` x ``extent`` cells:
        frames (N, 3, H, W), x1 / y1 (N,) -> (N, 3, extent, extent); differentiable in all three."""
        side = torch.full_like(x1, float(extent))
        return sample_boxes(frames, x1, y1, side, side, extent, extent)

    # ------------------------------------------------------------------------------------------
    # stages
    # ------------------------------------------------------------------------------------------
    def glance_step(self, frames: torch.Tensor):
        """frames (B, T, 3, H, W) -> (maps (B, T_G, Dg, h, w), pooled (B, T_G, Dg))."""
        b = frames.shape[0]
        fmap, pooled = self.glance(self.normalise(frames.index_select(1, self.glance_frames).flatten(0, 1)))
        return fmap.view(b, self.num_glance, *fmap.shape[1:]), pooled.view(b, self.num_glance, -1)

    def encode_clips(self, clips: torch.Tensor, frames_per_clip: int):
        """clips (N * F, 3, S, S), F frames per clip -> (maps (N * F, Df, s, s), pooled (N * F, Df))."""
        with shift_segments(self.focus, frames_per_clip):
            return self.focus(clips)

    def train_cube_features(self, frames: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """The training forward's cube features (B, K, Df), differentiable in the centres by ``gradient``."""
        b, k = centres.shape[:2]
        tp, p = self.cube_frames, self.patch_size
        x1, y1, start = (v.reshape(b * k) for v in self.corners(centres))  # (B*K,)
        video_rows = torch.arange(b, device=frames.device).repeat_interleave(k)  # (B*K,)
        last = self.num_segments - 1
        if self.gradient == "pixel":  # Eqs. 2-4: trilinear samples of the pixels
            times = start.unsqueeze(1) + torch.arange(tp, device=frames.device, dtype=start.dtype)  # (B*K, T')
            lower = times.detach().floor().clamp(0, last - 1)
            weight = (times - lower).unsqueeze(-1).unsqueeze(-1).unsqueeze(-1).flatten(0, 1)  # (B*K*T', 1, 1, 1)
            rows = video_rows.repeat_interleave(tp)
            xs, ys = x1.repeat_interleave(tp), y1.repeat_interleave(tp)
            before = self.crop(self.normalise(frames[rows, lower.flatten().long()]), xs, ys, p)
            after = self.crop(self.normalise(frames[rows, lower.flatten().long() + 1]), xs, ys, p)
            cubes = before + weight * (after - before)  # (B*K*T', 3, P, P)
            _, pooled = self.encode_clips(cubes, tp)
            return pooled.view(b, k, tp, -1).mean(dim=2)
        # Eqs. 5-6: an enlarged cube, one feature cell more along every axis, cropped without gradient
        maps, offset = self.enlarged_maps(frames, video_rows, x1, y1, start)
        # c - stopgrad(c) + o: zero in value, the centre's gradient in feature cells (Eq. 6)
        features = self.read_enlarged(maps, offset, start - start.detach(), (y1 - y1.detach()) / FOCUS_STRIDE,
                                      (x1 - x1.detach()) / FOCUS_STRIDE)
        return features.view(b, k, -1)  # (B, K, Df)

    def enlarged_maps(self, frames: torch.Tensor, video_rows: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor,
                      start: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The feature maps e' of the enlarged cubes (paper Eq. 5) and the cubes' frame offsets inside them.

        frames (B, T, 3, H, W); video_rows (N,) the video of each cube; x1, y1, start (N,) the cubes'
        top-left pixels and first frames. Each enlarged cube is the (P + s) x (P + s) box centred on the
        cube's box (a bilinear crop, s = :data:`FOCUS_STRIDE`) on the T' + 1 whole frames from
        ``floor(start)`` (clamped into the video), cropped without gradient. Returns maps
        (N, Df, T' + 1, s_f + 1, s_f + 1) and offset (N,) = start - first frame, in [0, 1] (detached).
        """
        tp = self.cube_frames
        first = start.detach().floor().clamp(0, self.num_segments - tp - 1)
        offset = start.detach() - first
        rows = video_rows.repeat_interleave(tp + 1)
        indices = (first.long().unsqueeze(1) + torch.arange(tp + 1, device=frames.device)).flatten()
        half = FOCUS_STRIDE / 2.0
        with torch.no_grad():
            enlarged = self.crop(self.normalise(frames[rows, indices]), (x1 - half).detach().repeat_interleave(tp + 1),
                                 (y1 - half).detach().repeat_interleave(tp + 1), self.patch_size + FOCUS_STRIDE)
        maps, _ = self.encode_clips(enlarged, tp + 1)  # (N*(T'+1), Df, s_f + 1, s_f + 1)
        return maps.view(-1, tp + 1, *maps.shape[1:]).transpose(1, 2), offset

    def read_enlarged(self, maps: torch.Tensor, offset: torch.Tensor, moved_t: torch.Tensor, moved_r: torch.Tensor,
                      moved_c: torch.Tensor) -> torch.Tensor:
        """The cube features (N, Df): the mean of e, the trilinear read of ``maps`` (N, Df, T'+1, s+1, s+1)
        at the cube's place moved by ``moved_*`` (N,) cells (frames, rows, columns): element (k, i, j) of e
        sits at (k + offset, i + 1/2, j + 1/2) + moved in e' (Eq. 6's o plus c - stopgrad(c))."""
        cells = maps.shape[-1] - 1
        steps_t = torch.arange(self.cube_frames, device=maps.device, dtype=maps.dtype).unsqueeze(0)
        steps_s = torch.arange(cells, device=maps.device, dtype=maps.dtype).unsqueeze(0) + 0.5
        e = trilinear_read(maps, steps_t + (offset + moved_t).unsqueeze(1), steps_s + moved_r.unsqueeze(1),
                           steps_s + moved_c.unsqueeze(1))  # (N, Df, T', s, s)
        return e.mean(dim=(2, 3, 4))

    def eval_cube_features(self, frames: torch.Tensor, video_rows: torch.Tensor, centres: torch.Tensor,
                           plans) -> torch.Tensor:
        """Inference cube features (n, Df), one cube per row: frames (B, T, 3, H, W), video_rows (n,) the video
        of each cube, centres (n, 3) and the frames each cube processes (``plans``: n lists of frame indices).
        Cubes are encoded in groups of equal frame counts, one clip per cube (a shifted encoder sees each
        cube's frames as one clip)."""
        x1, y1, _ = self.corners(centres)
        out = frames.new_zeros(len(plans), self.focus.feature_dim, dtype=torch.float32)
        for count in sorted({len(plan) for plan in plans}):
            members = [i for i, plan in enumerate(plans) if len(plan) == count]
            index = torch.tensor(members, device=frames.device)
            frame_ids = torch.tensor([plans[i] for i in members], device=frames.device).flatten()  # (m*count,)
            picked = self.normalise(frames[video_rows[index].repeat_interleave(count), frame_ids])  # (m*count, 3, H, W)
            patches = self.crop(picked, x1[index].repeat_interleave(count), y1[index].repeat_interleave(count),
                                self.patch_size)
            _, pooled = self.encode_clips(patches, count)
            out[index] = pooled.view(len(members), count, -1).float().mean(dim=1)
        return out

    def policy_step(self, frames: torch.Tensor):
        """Glance and policy: (glance maps, glance pooled (B, T_G, Dg), centres (B, K, 3))."""
        fmap, pooled = self.glance_step(frames)
        centres = self.policy.spatial(fmap.detach() if self.training else fmap)
        return fmap, pooled, centres

    def exits(self, glance_pooled: torch.Tensor, cube_features: torch.Tensor) -> torch.Tensor:
        """The classifier: glance features (B, T_G, Dg) and cube features (B, K, Df) -> stage logits (B, K + 1, C):
        p0 from the running maximum of the glance frames, p_k from the running maximum of cubes 1..k next to
        the glance state (feature reuse)."""
        classifier = self.classifier
        glance_state = classifier.glance_states(glance_pooled)[:, -1]  # (B, hidden): max over the glance frames
        p0 = classifier.glance_exits[0](glance_state)  # (B, C)
        cube_logits = classifier.focus_logits(classifier.focus_states(cube_features), glance_state)  # (B, K, C)
        return torch.cat((p0.unsqueeze(1), cube_logits), dim=1)

    # ------------------------------------------------------------------------------------------
    @property
    def num_exit_stages(self) -> int:
        """K + 1: the glance exit, then one exit after each cube."""
        return self.num_cubes + 1

    def forward(self, video: torch.Tensor, generator: Optional[torch.Generator] = None,
                before_focus=None) -> AdaFocusV3Output:
        frames = self.frames_of(video)
        b = frames.shape[0]
        _, glance_pooled, centres = self.policy_step(frames)
        starts = self.corners(centres)[2]
        if self.training:
            cube_features = self.train_cube_features(frames, centres)  # (B, K, Df)
            first = starts.detach().round().long()
            used = torch.full_like(first, self.cube_frames)
        else:
            plans = inference_windows(starts, self.num_segments, self.cube_frames)
            if before_focus is not None:  # the frames the cubes read, padded with each video's first one
                wanted = [sorted({f for cube in plan for f in cube}) for plan in plans]
                width = max(len(w) for w in wanted)
                before_focus(torch.tensor([w + w[:1] * (width - len(w)) for w in wanted], device=frames.device),
                             None)
            flat = [cube for video_plan in plans for cube in video_plan]
            video_rows = torch.arange(b, device=frames.device).repeat_interleave(self.num_cubes)
            cube_features = self.eval_cube_features(frames, video_rows, centres.flatten(0, 1),
                                                    flat).view(b, self.num_cubes, -1)
            first = torch.tensor([[cube[0] for cube in plan] for plan in plans], device=frames.device)
            used = torch.tensor([[len(cube) for cube in plan] for plan in plans], device=frames.device)
        stage_logits = self.exits(glance_pooled, cube_features)
        return AdaFocusV3Output(stage_logits, centres, starts, first, used, self.boxes(centres))

    @torch.no_grad()
    def early_exit_steps(self, video: torch.Tensor, amp, lap=None, before_focus=None):
        """The K + 1 exits one stage at a time, for the adaptive runtime (a generator; evaluation only).

        Yields p0 (B, C) after the glance and the policy (all cube centres at once); each time it is sent
        the positions (m,) (long, on the device) of the videos of its last yield that continue, it yields the
        next cube's exit (m, C) for those only: their cube's uncovered frames through the focus encoder, the
        classifier's running maximum continued. The cubes' frames are fixed by the policy's one decision, so
        exit k equals the full pass's (to the batched kernels' rounding). ``amp``: the caller's (enabled,
        dtype) autocast setting for the two encoders. ``lap('policy')`` is called after the policy.
        ``before_focus(indices (m, count), rows (m,))`` is called before each cube with the frames it reads
        (per group of videos whose cube reads ``count`` frames) and their rows of ``video``.
        """
        frames = self.frames_of(video)
        device_type, (amp_on, amp_dtype) = frames.device.type, amp
        rows = torch.arange(frames.shape[0], device=frames.device)
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_on):
            fmap, pooled = self.glance_step(frames)
        centres = self.policy.spatial(fmap.float())
        if lap is not None:
            lap("policy")
        plans = inference_windows(self.corners(centres)[2], self.num_segments, self.cube_frames)
        classifier = self.classifier
        glance_state = classifier.glance_states(pooled.float())[:, -1]
        state = None
        keep = yield classifier.glance_exits[0](glance_state)
        for k in range(self.num_cubes):
            if keep is not None and keep.numel() < rows.numel():
                rows, glance_state = rows[keep], glance_state[keep]
                state = state[keep] if state is not None else None
            picked = rows.tolist()
            if before_focus is not None:  # this cube's frames, for each group of equal frame counts
                for count in sorted({len(plans[i][k]) for i in picked}):
                    members = [j for j, i in enumerate(picked) if len(plans[i][k]) == count]
                    before_focus(torch.tensor([plans[picked[j]][k] for j in members], device=frames.device),
                                 rows[members])
            with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_on):
                features = self.eval_cube_features(frames, rows, centres[rows, k], [plans[i][k] for i in picked])
            state = classifier.focus_states(features.float().unsqueeze(1), state)[:, 0]
            keep = yield classifier.focus_logits(state.unsqueeze(1), glance_state, first_step=k)[:, 0]


# --------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------
def _no_official_layout(what: str):
    def refuse(*_):
        raise ValueError(f"AdaFocusV3 has no released checkpoints: there is no official layout to {what}")
    return refuse


ADAFOCUS_V3 = register_variant(Variant(
    name="adafocus_v3",
    summary="AdaFocusV3 (from the paper; no released code): MobileNetV2 glance on all frames, a non-recurrent "
            "policy placing K video cubes of P x P x T' at once, ResNet-50 focus on the cubes, one exit per cube "
            "after the glance exit",
    build=AdaFocusV3,
    hyper_parameters=("num_segments", "num_glance_segments", "num_focus_segments", "cube_frames", "patch_size",
                      "input_size", "glance_arch", "focus_arch", "stn_hidden_dim", "classifier_dim", "dropout",
                      "v3_gradient", "tsm_encoders", "shift_div", "pretrained", "glance_weights", "focus_weights",
                      "zero_init_residual"),
    encoders={"glance": ("mbv2",), "focus": FOCUS_ARCHS},
    policy="spatial-temporal: one pass over the glance maps of the whole video gives the centres (x, y, z) of all "
           "K cubes; at inference covered frames are never processed again",
    classifier="running max-pooling over the glance frames (exit p0), then over the cubes next to the glance state "
               "(exits p1..pK)",
    exits="K + 1 stages: the glance exit, then the exit after each cube",
    frame_source="candidates",
    objective_terms=(),  # the variant's own objective (paper Eq. 1), build_objective
    objective=build_objective,
    flops=adafocus_v3_flops,
    checkpoint=CheckpointLayout(name="none (AdaFocusV3 has no released checkpoints)", detect=lambda keys: False,
                                convert=_no_official_layout("convert"), manifest=_no_official_layout("list")),
    datasets=("actnet", "fcvid", "minik", "something", "somethingv2"),
    presets=tuple(f"v3_{d}_p{p}" for d in ("actnet", "fcvid", "minik") for p in (96, 128))
    + ("v3_sthv1_p128x12", "v3_sthv2_p128x12"),
    # AdaFocusV2's pipeline (App. C): its rates and weight decay; 18 frames and at most 18 cubes (§4.1, App. A).
    defaults={"num_segments": 18, "num_glance_segments": 18, "num_focus_segments": 18, "patch_size": 128,
              "stn_hidden_dim": 1024, "weight_decay": 1e-4, "stn_lr_ratio": 0.1, "global_lr_ratio": 0.5,
              "classifier_lr_ratio": 5.0},
))
