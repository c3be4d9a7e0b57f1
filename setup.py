"""Packaging for the Uni-AdaFocus reimplementation.

The repository keeps the layout users of this family of projects expect: ``models/``, ``ops/`` and
``datasets/`` at the top level, run from the repository root (``python main.py ...``). Those names
are generic (Hugging Face's ``datasets`` above all), so an installed copy does not claim them: the
three packages (and their sub-packages) are installed under the ``uniadafocus`` namespace
(``uniadafocus.models``, ``uniadafocus.ops``, ``uniadafocus.datasets``). ``models`` and ``datasets``
import only themselves; ``ops`` finds them beside itself (``ops/packages.py``), so the same code runs
in both places. ``requirements.txt`` holds the tested pins; the ranges below are what the code needs.
"""
import os

from setuptools import setup


def _packages(*roots):
    """``uniadafocus.<dotted name>`` -> folder, for every package folder under ``roots``."""
    found = {}
    for root in roots:
        for folder, _, files in os.walk(root):
            if "__init__.py" in files:
                found["uniadafocus." + folder.replace(os.sep, ".")] = folder
    return found


PACKAGES = _packages("models", "ops", "datasets")

setup(
    name="uniadafocus",
    version="0.1.0",
    description="Uni-AdaFocus: spatial-, temporal- and sample-wise dynamic video recognition (PyTorch)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy>=1.24",
        "pillow>=9.0",
        "tqdm>=4.60",
    ],
    extras_require={
        "tensorboard": ["tensorboard>=2.10"],
        "video": ["av>=11"],
        "test": ["pytest>=7.0"],
    },
    entry_points={
        "console_scripts": [
            "uniadafocus-flops = uniadafocus.models.flops:main",
        ],
    },
)
