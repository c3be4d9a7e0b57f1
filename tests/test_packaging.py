"""The generic package names (models, ops, datasets) neither break nor get broken by other packages.

An installed copy lives under the ``uniadafocus`` namespace, so it never shadows Hugging Face's
``datasets`` (or any other ``models``/``ops``); run from the repository root, the project's own
packages win over installed ones of the same name.
"""
import shutil
import subprocess
import sys
import textwrap

from support import REPO


def _fake_package(root, name):
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text("FOREIGN = True\n")


def test_installed_copy_coexists_with_foreign_datasets_models_and_ops(tmp_path):
    target, foreign, source = tmp_path / "site", tmp_path / "foreign", tmp_path / "source"
    for name in ("datasets", "models", "ops"):
        _fake_package(foreign, name)
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "uniadafocus"]
    probe = textwrap.dedent("""
        import datasets, models, ops
        assert all(getattr(m, "FOREIGN", False) for m in (datasets, models, ops)), "foreign packages were shadowed"
        from uniadafocus.models import UniAdaFocus
        from uniadafocus.ops.checkpoint import load_checkpoint
        from uniadafocus.models import flops, patches, frame_selection, get_variant
        from uniadafocus.ops import config, evaluation, objective
        from uniadafocus.ops.early_exit import AdaptiveRunner, budget_sweep
        args = config.parse_args(["--dataset", "synthetic"])
        assert get_variant(args.variant).name == "mn2_r50"
        import uniadafocus.datasets
        m = UniAdaFocus(num_classes=3, num_segments=4, num_glance_segments=2, num_focus_segments=2,
                        patch_size=32, input_size=64, classifier_dim=8, focus_arch="resnet18").eval()
        import torch
        with torch.no_grad():
            assert m(torch.zeros(1, 4, 3, 64, 64)).logits.shape == (1, 3)
        import datasets as again
        assert again.FOREIGN
        print("ok")
    """)
    env = {"PYTHONPATH": f"{target}:{foreign}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_repository_root_packages_win_over_installed_namesakes(tmp_path):
    foreign = tmp_path / "foreign"
    for name in ("datasets", "models", "ops"):
        _fake_package(foreign, name)
    probe = "import datasets, models, ops; assert not any(hasattr(m, 'FOREIGN') for m in (datasets, models, ops)); " \
            "from models import UniAdaFocus; print('ok')"
    env = {"PYTHONPATH": str(foreign), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
