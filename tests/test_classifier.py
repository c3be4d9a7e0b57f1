"""Properties of the FrameExit-style exit classifier (models.classifier)."""
import torch

from models.classifier import ExitClassifier


def _classifier(seed=0):
    torch.manual_seed(seed)
    clf = ExitClassifier(glance_dim=12, focus_dim=10, num_glance=4, num_focus=5, num_classes=3, hidden_dim=8)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for bn in (clf.glance_mlp.layers[1], clf.focus_mlp.layers[1]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
    return clf.eval()


def test_accumulated_states_are_running_maxima():
    clf = _classifier()
    g, f = torch.randn(6, 4, 12), torch.randn(6, 5, 10)
    with torch.no_grad():
        mg, mf = clf.glance_states(g), clf.focus_states(f)
        zg, zf = clf.glance_mlp(g), clf.focus_mlp(f)
    assert (mg[:, 1:] >= mg[:, :-1]).all() and (mf[:, 1:] >= mf[:, :-1]).all()
    for t in range(4):
        torch.testing.assert_close(mg[:, t], zg[:, :t + 1].max(dim=1).values)
    for t in range(5):
        torch.testing.assert_close(mf[:, t], zf[:, :t + 1].max(dim=1).values)


def test_exit_t_depends_only_on_the_first_t_steps():
    clf = _classifier(1)
    g, f = torch.randn(3, 4, 12), torch.randn(3, 5, 10)
    with torch.no_grad():
        full = clf(g, f)  # (3, 9, 3)
        for t in range(5):
            changed = f.clone()
            changed[:, t + 1:] = torch.randn_like(changed[:, t + 1:])
            torch.testing.assert_close(clf(g, changed)[:, :4 + t + 1], full[:, :4 + t + 1])


def test_focus_exits_see_the_final_glance_state():
    clf = _classifier(2)
    g, f = torch.randn(2, 4, 12), torch.randn(2, 5, 10)
    with torch.no_grad():
        logits = clf(g, f)
        final_glance = clf.glance_states(g)[:, -1]
        mf = clf.focus_states(f)
        for t in range(5):
            expected = clf.focus_exits[t](torch.cat((mf[:, t], final_glance), dim=1))
            torch.testing.assert_close(logits[:, 4 + t], expected)
        for t in range(4):
            torch.testing.assert_close(logits[:, t], clf.glance_exits[t](clf.glance_states(g)[:, t]))


def test_incremental_focus_states_continue_exactly():
    clf = _classifier(3)
    f = torch.randn(4, 5, 10)
    with torch.no_grad():
        full = clf.focus_states(f)
        first = clf.focus_states(f[:, :2])
        rest = clf.focus_states(f[:, 2:], previous=first[:, -1])
    torch.testing.assert_close(torch.cat((first, rest), dim=1), full)


def test_exit_count_and_width_follow_the_configuration():
    clf = ExitClassifier(1280, 2048, 16, 16, 200)  # the official configuration
    assert len(clf.glance_exits) == 16 and len(clf.focus_exits) == 16
    assert clf.focus_exits[0][1].in_features == 8192 and clf.glance_exits[0][1].in_features == 4096
    params = sum(p.numel() for p in clf.parameters())
    assert params == 52_984_064  # the official classifier
