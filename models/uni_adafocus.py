"""Uni-AdaFocus: glance, policy, focus and an early-exit classifier in one module (paper §4).

Data flow for a batch of B videos of T0 candidate frames (docs/official-behaviour.md, "Forward pass"):

1. **glance** — T_G frames (evenly spaced in evaluation, one random frame per segment in training) go
   through MobileNetV2: feature maps (B*T_G, 1280, h, w), pooled features (B*T_G, 1280), and the
   glance head's logits. The glance sees the whole frame at ``input_size`` as officially, or, with
   ``glance_size`` set, downscaled to ``glance_size`` (the paper's cheap, coarse global view).
2. **policy** — on the glance features: the spatial branch gives one patch per glance frame (from the
   *detached* maps), linearly interpolated to all T0 frames; the temporal branch gives frame weights
   (a softmax, and a tempered softmax for selection).
3. **spatial objective input** — every glance frame's feature map is cropped with its own patch
   (differentiably) and pooled; the auxiliary head classifies it.
4. **frame selection** — T_L focus frames at the quantiles of the weights' CDF (deterministic in
   evaluation, stratified in training).
5. **focus** — P x P patches cut from those frames with their (detached) actions go through the
   focus encoder. In training a second pass with random patches of native size shares one forward.
6. **classifier** — running-max accumulation over glance then focus steps; one logits row per exit.

Evaluation is deterministic and lean: it draws no random numbers, runs the spatial policy once, and
does no random-patch pass and no Monte-Carlo work (those exist only for the training objective).
Backbones follow the caller's autocast; everything else runs in float32 (the official semi-AMP).

The forward is built from three reusable stages, which the adaptive early-exit runtime
(``ops.early_exit.adaptive``) calls on shrinking subsets of the batch:

* :meth:`UniAdaFocus.glance_stage` — step 1 -> :class:`GlanceStage`;
* :meth:`UniAdaFocus.policy_stage` — steps 2-4 -> :class:`PolicyStage` (any subset of the videos);
* :meth:`UniAdaFocus.focus_features` — the crop and focus encoder of step 5, for any subset of videos
  and focus steps.

Training-time ablations (paper Tables 6-9 and 15; the constructor's keywords after ``zero_init_residual``,
each defaulting to the behaviour above): :mod:`.training_ablations`. Rules that draw at random use the
training generator, and in evaluation a generator of the model's own, seeded with ``seed`` each time the
model is put in evaluation mode. The structures the forward and its stages return:
:mod:`.uni_adafocus_outputs`.

Backbone stages expect the caller to have turned autocast off and to pass the caller's setting as
``amp = (enabled, dtype)`` (see :meth:`UniAdaFocus.autocast_setting`), as :meth:`forward` does.

Frames are only ever read by index from the (B, T0, 3, H, W) input. :meth:`forward` and
:meth:`early_exit_steps` take a ``before_focus(indices, rows)`` hook, called with the focus frames
(n, K) of the videos ``rows`` (n,) (None: all) before the focus encoder reads them, so that a caller
may leave frames undecoded until the policy has chosen (``datasets.selected_frames``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from .backbones import FocusEncoder, GlanceEncoder, downscale, glance_feature_size
from .classifier import ExitClassifier
from . import frame_selection
from .inference import call_in_chunks
from .patches import PatchGeometry, crop_inner_region, place_patches, size_patches
from .policy import Policy
from .training_ablations import TrainingAblations
from .uni_adafocus_outputs import FocusPass, GlanceStage, PolicyStage, UniAdaFocusOutput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def video_frames(video: torch.Tensor, count: int, input_size: int, name: Optional[str] = None) -> torch.Tensor:
    """(B, T, 3, H, W) or (B, 3T, H, W) -> (B, T, 3, H, W) as given (uint8 or normalised), checked against the
    model's T = ``count`` and H = W = ``input_size``: ValueError naming what differs, and ``name`` (an input
    of several, such as "glance"), or without it the video and the model's ``num_segments``."""
    label = name or "video"
    if video.dim() == 4 and video.shape[1] % 3 == 0:
        video = video.view(video.shape[0], video.shape[1] // 3, 3, *video.shape[2:])
    if video.dim() != 5 or video.shape[2] != 3:
        raise ValueError(f"{label} must be (B, T, 3, H, W) or (B, 3T, H, W), got {tuple(video.shape)}")
    if video.shape[1] != count:
        expects = count if name else f"num_segments={count}"
        raise ValueError(f"{label} has {video.shape[1]} frames, the model expects {expects}")
    if video.shape[-2:] != (input_size, input_size):
        raise ValueError(f"{name + ' ' if name else ''}frames are {tuple(video.shape[-2:])}, the model expects "
                         f"input_size={input_size}")
    return video


def normalise_uint8(frames: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 frames (..., 3, H, W) -> normalised float32 with ``mean``, ``std`` (3, 1, 1); floating frames pass
    through."""
    if frames.dtype == torch.uint8:
        return (frames.float().div_(255.0) - mean) / std
    return frames


class UniAdaFocus(nn.Module):
    """The Uni-AdaFocus network. Keyword names match the command-line flags.

    forward(video, generator=None, before_focus=None) with video (B, T0, 3, H, W) or the official
    flattened layout (B, T0*3, H, W); uint8 frames are normalised here (ImageNet mean/std),
    floating-point frames are taken as already normalised. H = W = input_size. The training draws
    (glance frames, stratified selection offsets, random patches) come from ``generator`` or, when it
    is None, from the global torch RNG; dropout always uses the global RNG. ``before_focus(indices,
    rows)``: called once with the T_L focus frames (B, T_L) and ``rows=None`` after the policy chose
    them and before they are read (see the module doc).

    ``patch_transform`` (``models.patch_transforms``; the paper's Table 11): the spatial policy also
    outputs the transformation's k parameters, so every action below is (..., 4 + k), the box terms
    first; image patches and the auxiliary feature-map crop are both sampled through it. ``none``
    (default): the plain box, k = 0.
    """

    #: The registry entry of this network (``models.mn2_r50``).
    variant = "mn2_r50"

    def __init__(self, num_classes: int, num_segments: int = 48, num_glance_segments: int = 16,
                 num_focus_segments: int = 16, patch_size: int = 96, input_size: int = 224,
                 stn_hidden_dim: int = 128, temporal_hidden_dim: int = 64, classifier_dim: int = 4096,
                 dropout: float = 0.2, fc_dropout: float = 0.2, temperature: float = 1.0,
                 glance_arch: str = "mbv2", focus_arch: str = "resnet50", pretrained: bool = False,
                 glance_weights: Optional[str] = None, focus_weights: Optional[str] = None,
                 detach_temporal_input: bool = False, glance_size: Optional[int] = None,
                 zero_init_residual: bool = False, patch_transform: str = "none",
                 aux_supervision: bool = True, diversity_augmentation: bool = True, policy_stop_gradient: bool = True,
                 spatial_training: str = "features", patch_scale: str = "policy", size_regulariser: bool = True,
                 patch_location: str = "policy", frame_sampling: str = "policy", reuse_glance_features: bool = True,
                 spatial_supervision: str = "glance", enlarged_patch_margin: int = 0, seed: int = 0):
        super().__init__()
        if num_focus_segments > num_segments:
            raise ValueError(f"num_focus_segments ({num_focus_segments}) > num_segments ({num_segments})")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.num_classes = num_classes
        self.num_segments, self.num_glance, self.num_focus = num_segments, num_glance_segments, num_focus_segments
        self.temperature = temperature
        self.detach_temporal_input = detach_temporal_input
        if glance_size is not None and not 0 < glance_size <= input_size:
            raise ValueError(f"glance_size must be in 1..input_size ({input_size}), got {glance_size}")
        #: Side of the frames the glance encoder sees: ``input_size`` (official) or a smaller ``glance_size``.
        self.glance_size = glance_size or input_size
        self.geometry = PatchGeometry(patch_size, input_size, glance_feature_size(self.glance_size),
                                      transform=patch_transform)

        self.glance = GlanceEncoder(glance_arch, pretrained=pretrained, weights=glance_weights,
                                    zero_init_residual=zero_init_residual)
        self.focus = FocusEncoder(focus_arch, pretrained=pretrained, weights=focus_weights,
                                  zero_init_residual=zero_init_residual)
        gdim, fdim = self.glance.feature_dim, self.focus.feature_dim
        self.glance_head = nn.Sequential(nn.Dropout(fc_dropout), nn.Linear(gdim, num_classes))  # FC_G
        self.focus_head = nn.Sequential(nn.Dropout(fc_dropout), nn.Linear(fdim, num_classes))  # FC_L
        self.ablations = TrainingAblations(aux_supervision, diversity_augmentation, policy_stop_gradient,
                                           spatial_training, patch_scale, size_regulariser, patch_location,
                                           frame_sampling, reuse_glance_features, spatial_supervision,
                                           enlarged_patch_margin)
        self.seed, self._eval_generator = seed, None
        # FC_Aux: on e^G crops, or on e^L crops (AdaFocusV3's supervision, spatial_supervision 'local')
        self.spatial_head = nn.Linear(fdim if spatial_supervision == "local" else gdim, num_classes)
        self.policy = Policy(gdim, stn_hidden_dim, temporal_hidden_dim, self.geometry.feature_size,
                             transform_params=self.geometry.num_transform_params)
        self.classifier = ExitClassifier(gdim, fdim, num_glance_segments, num_focus_segments, num_classes,
                                         classifier_dim, dropout)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    @property
    def exits_at_glance(self) -> bool:
        """Whether early exit may stop after the glance (stage 0 = the classifier's last glance exit). Not
        without ``reuse_glance_features``: the classifier then reads zeros for the glance, so its glance exits
        give every video the same logits and the exit stages are the focus steps only. The one rule behind
        :attr:`num_exit_stages`, :attr:`exit_focus_frames`, the output's ``stage_logits``, the FLOPs stages
        (``models.flops``) and :meth:`early_exit_steps`."""
        return self.ablations.reuse_glance_features

    @property
    def exit_focus_frames(self) -> Tuple[int, ...]:
        """The focus frames each early-exit stage has processed: (0, 1, ..., T_L) (stage 0 the last glance
        exit), or (1, ..., T_L) without a glance exit (:attr:`exits_at_glance`)."""
        return tuple(range(0 if self.exits_at_glance else 1, self.num_focus + 1))

    @property
    def num_exit_stages(self) -> int:
        """T_L + 1: the last glance exit, then one after each focus frame; T_L without the glance exit
        (:attr:`exits_at_glance`)."""
        return len(self.exit_focus_frames)

    @property
    def patch_size(self) -> int:
        return self.geometry.patch_size

    @property
    def input_size(self) -> int:
        return self.geometry.input_size

    @property
    def feature_size(self) -> int:
        return self.geometry.feature_size

    # ------------------------------------------------------------------------------------------
    # pieces
    # ------------------------------------------------------------------------------------------
    def frames_view(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T0, 3, H, W) view of a video in either accepted layout, with checks."""
        if video.dim() == 4:
            b, tc, h, w = video.shape
            if tc % 3:
                raise ValueError(f"flattened video needs T0*3 channels, got {tc}")
            video = video.view(b, tc // 3, 3, h, w)
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be (B, T0, 3, H, W) or (B, T0*3, H, W), got {tuple(video.shape)}")
        if video.shape[1] != self.num_segments:
            raise ValueError(f"video has {video.shape[1]} frames, the model expects num_segments={self.num_segments}")
        if video.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"frames are {tuple(video.shape[-2:])}, the model expects input_size={self.input_size}")
        return video

    def normalise(self, frames: torch.Tensor, glance_size: Optional[int] = None) -> torch.Tensor:
        """uint8 frames (..., 3, H, W) -> normalised float32; floating frames pass through.

        ``glance_size``: also resize the frames (N, 3, H, W) as :func:`downscale` does with antialiasing.
        uint8 frames are resized first and normalised at the small size, which gives the same values (the
        normalisation is an affine map per channel and the interpolation weights sum to one) for a fraction
        of the element-wise work.
        """
        if frames.dtype != torch.uint8:
            return frames if glance_size is None else downscale(frames, glance_size, antialias=True)
        frames = frames.float()
        if glance_size is not None:
            frames = downscale(frames, glance_size, antialias=True)
        return (frames.div_(255.0) - self.pixel_mean) / self.pixel_std

    @staticmethod
    def autocast_setting(device_type: str):
        """The caller's autocast setting ``(enabled, dtype)`` for ``device_type``, as the stages take it."""
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)

    @staticmethod
    def gather_frames(frames: torch.Tensor, indices: torch.Tensor,
                      rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """frames (B, T, ...) at indices (n, K) of the videos ``rows`` (n,) -> (n, K, ...).

        ``rows`` defaults to all B videos (n = B). Only the selected frames are copied.
        """
        if rows is None:
            rows = torch.arange(frames.shape[0], device=frames.device)
        return frames[rows.to(frames.device).unsqueeze(1), indices.to(frames.device)]

    #: In evaluation, run the focus encoder on at most this many patches at a time (None: all at once).
    #: Huge CPU batches thrash memory; ``models.inference.prepare_for_inference`` sets it on CPUs. The
    #: glance encoder always sees the whole batch, so that the features steering the policy are
    #: computed exactly as without it.
    focus_chunk: Optional[int] = None

    def run_backbone(self, module: nn.Module, x: torch.Tensor, amp, chunk: Optional[int] = None):
        """Run a backbone under the caller's autocast setting ``amp`` (or none); results in float32.

        In evaluation with ``chunk`` set, the images go through in calls of at most ``chunk`` images
        (the same results to rounding: no BatchNorm statistics are computed in evaluation).
        """
        enabled, dtype = amp

        def run(part):
            with torch.autocast(x.device.type, dtype=dtype, enabled=enabled):
                out = module(part)
            return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()

        return call_in_chunks(run, x, None if self.training else chunk)

    def crop_focus_patches(self, frames: torch.Tensor, actions: torch.Tensor, margin: int = 0) -> torch.Tensor:
        """frames (B, K, 3, H, W) normalised, actions (B, K, 4) -> patches (B*K, 3, P, P); with ``margin``, the
        boxes grown to (P + margin) x (P + margin) patches (``enlarged_patch_margin``)."""
        if margin:
            return self.geometry.crop_enlarged(frames.flatten(0, 1), actions.flatten(0, 1), margin)
        return self.geometry.crop(frames.flatten(0, 1), actions.flatten(0, 1))

    def train(self, mode: bool = True):
        self._eval_generator = None  # evaluation draws start again from ``seed``
        return super().train(mode)

    def draw_generator(self, generator: Optional[torch.Generator], device) -> Optional[torch.Generator]:
        """Where the ablation rules draw: ``generator`` in training (None: the global RNG); in evaluation
        the model's own generator, seeded with ``seed`` when the model was last put in evaluation mode."""
        if self.training:
            return generator
        device = torch.device(device)
        if self._eval_generator is None or self._eval_generator.device.type != device.type:
            self._eval_generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._eval_generator

    def classifier_glance_input(self, features: torch.Tensor) -> torch.Tensor:
        """The glance features (B, T_G, Dg) the exit classifier reads: e^G's, or zeros without
        ``reuse_glance_features`` (the same parameters; the classifier then depends on the focus alone)."""
        return features if self.ablations.reuse_glance_features else torch.zeros_like(features)

    def classify(self, glance_features: torch.Tensor, focus_features: torch.Tensor) -> torch.Tensor:
        """Exit logits (B, T_G + T_L, C) of the classifier on glance features (B, T_G, Dg) and focus features
        (B, T_L, Df), the glance features as :meth:`classifier_glance_input` gives them (the forward's and
        every re-run of the classifier on other focus features)."""
        return self.classifier(self.classifier_glance_input(glance_features), focus_features)

    def random_actions(self, shape, device, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Random-patch actions (..., 4 + k): uniform position, size = exactly P input pixels, the patch
        transformation's identity."""
        gen_device = generator.device if generator is not None else device
        actions = torch.rand(*shape, 4, generator=generator, device=gen_device).to(device)
        actions[..., 2:] = self.geometry.native_scale
        return self.geometry.with_identity(actions)

    # ------------------------------------------------------------------------------------------
    # stages (shared by forward and the adaptive runtime, ops.early_exit.adaptive)
    # ------------------------------------------------------------------------------------------
    def glance_stage(self, frames: torch.Tensor, amp, generator: Optional[torch.Generator] = None,
                     head: bool = True) -> GlanceStage:
        """Step 1: the glance encoder on T_G frames of every video.

        frames: (B, T0, 3, H, W) as :meth:`frames_view` returns it (uint8 or normalised float), with
        autocast turned off by the caller and its setting passed as ``amp`` (the backbone runs under
        it). The glance frames are evenly spaced in evaluation and drawn from ``generator`` (or the
        global RNG) in training. ``head``: also compute the glance head's per-frame logits (B, T_G, C).
        """
        b, t0 = frames.shape[:2]
        indices = frame_selection.glance_frame_indices(t0, self.num_glance, b, random=self.training,
                                                       generator=generator, device=frames.device)  # (B, T_G)
        glance_frames = self.gather_frames(frames, indices).flatten(0, 1)  # (B*T_G, 3, H, W)
        glance_frames = self.normalise(glance_frames, glance_size=self.glance_size)  # (B*T_G, 3, S_g, S_g)
        # (B*T_G, Dg, h, w), (B*T_G, Dg)
        fmap, feats = self.run_backbone(self.glance, glance_frames, amp)
        logits = self.glance_head(feats).view(b, self.num_glance, -1) if head else None  # (B, T_G, C)
        if self.ablations.policy_stop_gradient:
            fmap = fmap.detach()
        return GlanceStage(indices=indices, features=feats.view(b, self.num_glance, -1),
                           feature_maps=fmap.view(b, self.num_glance, *fmap.shape[1:]), logits=logits)

    def policy_stage(self, glance: GlanceStage, num_frames: int, generator: Optional[torch.Generator] = None,
                     auxiliary: bool = True, frames: Optional[torch.Tensor] = None) -> PolicyStage:
        """Steps 2-4 on a glance stage (of any subset of the batch: see :meth:`GlanceStage.select`).

        The spatial policy reads the detached feature maps (one patch per glance frame, interpolated to
        all ``num_frames`` = T0 frames), the temporal policy the pooled features (frame weights), and
        the T_L focus frames are taken at the quantiles of the tempered weights (deterministic in
        evaluation, stratified with draws from ``generator`` in training). ``auxiliary``: also run the
        auxiliary head on every glance map cropped by its own patch (the spatial objective's input).
        Runs the spatial policy exactly once. The ablations' rules replace the policy's positions, sizes or
        frames (``frames`` (B, T0, 3, H, W): the candidates, which ``frame_sampling`` 'mg_sampler' reads).
        """
        b = glance.batch_size
        ablations, draws = self.ablations, self.draw_generator(generator, glance.features.device)
        fmap = glance.feature_maps  # (B, T_G, Dg, h, w), detached
        glance_actions = self.policy.spatial(fmap)  # (B, T_G, 4)
        glance_actions = size_patches(place_patches(glance_actions, ablations.patch_location, draws),
                                      ablations.patch_scale, self.geometry.native_scale, draws)
        all_actions = frame_selection.interpolate_actions(glance_actions, num_frames)  # (B, T0, 4)
        gfeat = glance.features
        scores = self.policy.temporal(gfeat.detach() if self.detach_temporal_input else gfeat)  # (B, T_G)
        frame_weights = torch.softmax(scores, dim=1)
        selection_weights = torch.softmax(scores / self.temperature, dim=1)

        spatial_frame_logits = None
        if auxiliary and ablations.spatial_supervision == "glance" and ablations.spatial_training == "features":
            # each glance map cropped by its own patch (differentiable in the actions)
            aux = self.geometry.crop_features(fmap.flatten(0, 1), glance_actions.flatten(0, 1))  # (B*T_G, Dg, p, p)
            spatial_frame_logits = self.spatial_head(aux.mean(dim=(2, 3))).view(b, self.num_glance, -1)  # (B, T_G, C)

        if ablations.frame_sampling == "policy":
            focus_indices = frame_selection.select_focus_frames(selection_weights, num_frames, self.num_focus,
                                                                random=self.training, generator=generator)  # (B, T_L)
        else:
            focus_indices = frame_selection.rule_frame_indices(
                ablations.frame_sampling, b, num_frames, self.num_focus, random=self.training, generator=draws,
                device=glance.features.device, frames=frames)  # (B, T_L)
        focus_actions = self.gather_frames(all_actions, focus_indices)  # (B, T_L, 4)
        if ablations.spatial_training == "features":  # 'pixels': the patches' gradient reaches the policy
            focus_actions = focus_actions.detach()
        return PolicyStage(glance_actions=glance_actions, all_actions=all_actions, frame_weights=frame_weights,
                           selection_weights=selection_weights, focus_indices=focus_indices,
                           focus_actions=focus_actions, spatial_frame_logits=spatial_frame_logits)

    def focus_features(self, frames: torch.Tensor, focus_indices: torch.Tensor, focus_actions: torch.Tensor, amp,
                       rows: Optional[torch.Tensor] = None, margin: int = 0, maps: bool = False):
        """Step 5: crop P x P patches and run the focus encoder, for any subset of videos and steps.

        frames: (B, T0, 3, H, W) the whole batch (uint8 or normalised float; autocast off, ``amp`` as
        in :meth:`glance_stage`). ``rows`` (n,): the videos to process (default all, n = B);
        focus_indices (n, K): their frames (of T0), e.g. ``policy.focus_indices[:, k:k+1]`` for step k
        only; focus_actions (n, K, 4), or (S, n, K, 4) for S patch sets of the same frames that share
        one encoder call (training: the policy's patches and the random ones). Only the n*K frames
        are gathered and normalised. Returns features (n, K, Df), or (S, n, K, Df), float32.
        ``margin``: crop (P + margin)-px patches of the grown boxes (:meth:`crop_focus_patches`); ``maps``:
        also return the encoder's feature maps, (n, K, Df, h, w) or (S, n, K, Df, h, w).
        """
        frames_k = self.normalise(self.gather_frames(frames, focus_indices, rows))  # (n, K, 3, H, W)
        sets = focus_actions.unsqueeze(0) if focus_actions.dim() == 3 else focus_actions  # (S, n, K, 4)
        patches = [self.crop_focus_patches(frames_k, actions, margin) for actions in sets.unbind(0)]  # S x (n*K, 3, P, P)
        patches = patches[0] if len(patches) == 1 else torch.cat(patches)
        fmaps = None
        if maps:
            fmaps = self.run_backbone(self.focus.feature_maps, patches, amp, self.focus_chunk)  # (S*n*K, Df, h, w)
            feats = fmaps.mean(dim=(2, 3))
            fmaps = fmaps.view(*sets.shape[:-1], *fmaps.shape[1:])  # (S, n, K, Df, h, w)
        else:
            feats = self.run_backbone(self.focus, patches, amp, self.focus_chunk)  # (S*n*K, Df)
        feats = feats.view(*sets.shape[:-1], feats.shape[-1])  # (S, n, K, Df)
        if focus_actions.dim() == 3:
            feats, fmaps = feats[0], None if fmaps is None else fmaps[0]
        return (feats, fmaps) if maps else feats

    def local_spatial_logits(self, focus_maps: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """AdaFocusV3's spatial objective input (``spatial_supervision`` 'local'): each patch's own region of
        the focus encoder's (detached) maps of its enlarged patch, pooled, through FC_Aux.

        focus_maps (B, K, Df, h, w) of patches grown by (P + margin) / P; actions (B, K, 4) the patches'
        actions, not detached (their gradient trains the policy). Returns (B, K, C).
        """
        b, k = actions.shape[:2]
        factor = (self.patch_size + self.ablations.enlarged_patch_margin) / self.patch_size
        side = max(2, round(focus_maps.shape[-1] / factor))
        inner = crop_inner_region(focus_maps.detach().flatten(0, 1), actions.flatten(0, 1), factor, side)
        return self.spatial_head(inner.mean(dim=(2, 3))).view(b, k, -1)

    def early_exit_steps(self, video: torch.Tensor, amp, lap=None, before_focus=None):
        """The :attr:`num_exit_stages` early-exit stages one at a time, for the adaptive runtime (a generator;
        evaluation).

        Yields stage 0's logits (B, C): the last glance exit, from the glance encoder and the glance
        MLP's running maximum alone (no glance head, no other glance exit, no auxiliary head). Each
        time it is sent the positions (m,) (long, on the device) of the videos of its last yield that
        continue, it yields the next stage's logits (m, C) for those only: the policy runs once, for
        the videos that passed stage 0, then one focus frame per stage, continuing each video's
        running-max focus state. Without the glance exit (:attr:`exits_at_glance`) nothing is yielded
        before the first focus frame: the policy runs for every video and the first yield is focus exit
        0. ``amp``: the caller's autocast setting, with autocast turned off around the whole run.
        ``lap(name)`` marks the end of the policy. ``before_focus(indices, rows)`` is called before every
        focus step with the step's frame (n, 1) of each video still running and those videos' rows (n,)
        of ``video``.
        """
        clf = self.classifier
        frames = self.frames_view(video)
        glance = self.glance_stage(frames, amp, head=False)
        glance_final = clf.glance_states(self.classifier_glance_input(glance.features))[:, -1]  # (B, H)
        if self.exits_at_glance:
            keep = yield clf.glance_exits[-1](glance_final)  # (B, C)
        else:  # no glance exit: every video goes on to the policy
            keep = torch.arange(frames.shape[0], device=frames.device)
        rows, glance_final = keep, glance_final[keep]
        candidates = None
        if self.ablations.frame_sampling == "mg_sampler":  # MG Sampler reads every candidate frame
            if before_focus is not None:
                before_focus(torch.arange(frames.shape[1], device=keep.device).expand(len(keep), -1), rows)
            candidates = frames[keep.to(frames.device)]
        policy = self.policy_stage(glance.select(keep), frames.shape[1], auxiliary=False, frames=candidates)
        indices, actions = policy.focus_indices, policy.focus_actions  # (n, T_L), (n, T_L, 4)
        del glance, policy
        if lap is not None:
            lap("policy")
        state = None  # (n, H) the running-max focus state
        for k in range(self.num_focus):
            if before_focus is not None:
                before_focus(indices[:, k:k + 1], rows)
            feats = self.focus_features(frames, indices[:, k:k + 1], actions[:, k:k + 1], amp, rows=rows)  # (n, 1, Df)
            states = clf.focus_states(feats, previous=state)  # (n, 1, H)
            keep = yield clf.focus_logits(states, glance_final, first_step=k)[:, 0]  # (n, C)
            if keep.numel() < rows.numel():
                rows, glance_final, indices, actions = rows[keep], glance_final[keep], indices[keep], actions[keep]
                states = states[keep]
            state = states[:, 0]

    # ------------------------------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------------------------------
    def forward(self, video: torch.Tensor, generator: Optional[torch.Generator] = None,
                before_focus=None) -> UniAdaFocusOutput:
        frames = self.frames_view(video)
        device_type = frames.device.type
        amp = self.autocast_setting(device_type)
        with torch.autocast(device_type, enabled=False):
            return self._forward(frames, amp, generator, before_focus)

    def _forward(self, frames: torch.Tensor, amp, generator: Optional[torch.Generator],
                 before_focus=None) -> UniAdaFocusOutput:
        b, t0, _, height, width = frames.shape
        training, ablations = self.training, self.ablations
        random_pass_on = training and ablations.diversity_augmentation
        local = training and ablations.spatial_supervision == "local"

        # 1. glance; 2-4. policy, spatial objective input, frame selection
        glance = self.glance_stage(frames, amp, generator, head=True)
        candidates = None
        if ablations.frame_sampling == "mg_sampler":  # MG Sampler reads every candidate frame
            if before_focus is not None:
                before_focus(torch.arange(t0, device=frames.device).expand(b, -1), None)
            candidates = frames
        policy = self.policy_stage(glance, t0, generator, auxiliary=True, frames=candidates)

        # 5. focus (+ the random-patch pass in training, in the same backbone call)
        if before_focus is not None:
            before_focus(policy.focus_indices, None)
        actions, random_actions = policy.focus_actions, None  # (B, T_L, 4)
        if random_pass_on:
            random_actions = self.random_actions((b, self.num_focus), frames.device, generator)
            actions = torch.stack((actions, random_actions))  # (2, B, T_L, 4)
        margin = ablations.enlarged_patch_margin if training else 0
        ffeat = self.focus_features(frames, policy.focus_indices, actions, amp, margin=margin, maps=local)
        if local:
            ffeat, fmaps = ffeat
            fmaps = fmaps.view(-1, b, *fmaps.shape[-4:])[0]  # (B, T_L, Df, h, w) of the policy's patches
        ffeat = ffeat.view(-1, b, self.num_focus, ffeat.shape[-1])  # (n, B, T_L, Df)
        focus_logits = self.focus_head(ffeat.flatten(0, 2)).view(-1, b, self.num_focus,
                                                                  self.num_classes)  # (n, B, T_L, C)

        # 6. classifier, once per pass (as official: its BatchNorm sees each pass separately)
        gfeat = glance.features  # (B, T_G, Dg)
        exit_logits = self.classify(gfeat, ffeat[0])  # (B, T_G + T_L, C)
        random_pass = None
        if random_pass_on:
            random_pass = FocusPass(self.classify(gfeat, ffeat[1]), focus_logits[1], random_actions)

        spatial_frame_logits = policy.spatial_frame_logits  # (B, T_G, C), or None
        if local:  # (B, T_L, C): the focus frames' e^L, the actions not detached
            live_actions = self.gather_frames(policy.all_actions, policy.focus_indices)
            spatial_frame_logits = self.local_spatial_logits(fmaps, live_actions)
        return UniAdaFocusOutput(
            exit_logits=exit_logits, glance_logits=glance.logits, focus_logits=focus_logits[0],
            spatial_frame_logits=spatial_frame_logits,
            spatial_logits=None if spatial_frame_logits is None else spatial_frame_logits.mean(dim=1),
            frame_weights=policy.frame_weights, selection_weights=policy.selection_weights,
            glance_indices=glance.indices, focus_indices=policy.focus_indices,
            glance_actions=policy.glance_actions, focus_actions=policy.focus_actions,
            patch_boxes=self.geometry.boxes(policy.focus_actions, height, width),
            glance_features=gfeat, focus_features=ffeat[0], random_pass=random_pass,
            ablated_terms=ablations.ablated_terms if training else frozenset(),
            single_pass=training and not random_pass_on, exits_at_glance=self.exits_at_glance)
