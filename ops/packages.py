"""The project's other packages, ``models`` and ``datasets``, as seen from ``ops``.

Run from the repository root the three packages are top-level (``models``, ``ops``, ``datasets``);
installed, they live under the ``uniadafocus`` namespace (see ``setup.py``), so that they never
shadow other packages of those generic names. ``ops`` depends on the other two (never the other
way round), and finds them beside itself from its own name, one way in both places::

    from .packages import models, datasets          # the packages
    from .packages import sibling
    files = sibling("datasets.files")                # one of their modules
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: '' from the repository root, 'uniadafocus.' when installed.
NAMESPACE = __name__[: -len("ops.packages")]


def sibling(name: str) -> ModuleType:
    """The module ``name`` (e.g. ``'models.flops'``) of this installation of the project."""
    return importlib.import_module(NAMESPACE + name)


models = sibling("models")
datasets = sibling("datasets")
