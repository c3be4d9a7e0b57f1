"""Both AdaFocusV2 forms learn: a tiny configuration of each (``adafocus_v2``, the ActivityNet form, and
``adafocus_v2_tsm``, the Something-Something form) overfits one fixed batch of random videos on the CPU
with main.py's own pieces (parsed flags, the variant's objective terms, its optimiser groups and rates,
gradient clipping where the variant's defaults set it). Two-process training and kill / ``--resume auto``
of both forms are in tests/test_main.py (their parametrisations)."""
from __future__ import annotations

import pytest
import torch

from models import get_variant
from ops import build, config
from ops.schedule import adjust_learning_rate

NUM_CLASSES = 4
BATCH = 4
#: Tiny sizes of each form (64-px frames, 32-px patches, ResNet-18 focus): T = 4 frames for the ActivityNet
#: form; G = 4 glance and L = 6 focus frames for the Something-Something form.
TINY = {
    "adafocus_v2": ["--num_segments", "4", "--stn_hidden_dim", "16", "--classifier_dim", "32"],
    "adafocus_v2_tsm": ["--num_glance_segments", "4", "--num_segments", "6", "--num_focus_segments", "6"],
}
COMMON = ["--dataset", "synthetic", "--input_size", "64", "--patch_size", "32", "--focus_arch", "resnet18",
          "--no-pretrained", "--lr", "0.01", "--epochs", "1"]
STEPS = 40


def _batch(args, seed=0):
    """(focus clip (B, T, 3, S, S), {'glance': (B, G, 3, S, S)} for a variant that samples its glance clip
    apart, labels (B,)): random videos, each a random colour under pixel noise (so that any patch of a video,
    the random-box pass's included, can tell it from the others)."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.randn(BATCH, 1, 3, 1, 1, generator=g)
    size = args.input_size

    def frames(count):
        return colours + 0.5 * torch.randn(BATCH, count, 3, size, size, generator=g)

    separate = get_variant(args.variant).frame_source == "separate"
    video = frames(args.num_segments)
    glance = {"glance": frames(args.num_glance_segments)} if separate else {}
    return video, glance, torch.arange(BATCH) % NUM_CLASSES


@pytest.mark.parametrize("variant", sorted(TINY))
def test_a_tiny_v2_overfits_one_batch(variant):
    torch.manual_seed(0)
    args = config.parse_args(["--variant", variant] + COMMON + TINY[variant])
    model = get_variant(variant).build_from(args, num_classes=NUM_CLASSES)
    objective = build.build_objective(args)
    optimizer = build.build_optimizer(args, model)
    adjust_learning_rate(optimizer, 0, args.lr, args.epochs, args.lr_type, args.lr_steps, args.weight_decay)
    video, glance, target = _batch(args)
    generator = torch.Generator().manual_seed(1)
    losses = []
    model.train()
    for _ in range(STEPS):
        terms = objective(model(video, generator=generator, **glance), target, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        if args.clip_gradient:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_gradient)
        optimizer.step()
        losses.append(float(terms.total.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    end = sum(losses[-3:]) / 3
    assert end < 0.1 * losses[0], f"{variant}: loss {losses[0]:.3f} -> {end:.3f} ({losses})"
    model.eval()
    with torch.no_grad():
        logits = model(video, **glance).logits
    assert logits.argmax(dim=1).tolist() == target.tolist(), logits
