"""Names and defaults the command line shows before it imports any heavy module.

``vpipe --help``, each command's ``--help`` and the choice lists of ``--backbone``,
``--sampler`` ... need the names of what is registered. The registries themselves
live next to the code they register (backbones and heads with torch, datasets with
pandas, samplers with pyarrow), and importing them costs more than a second before a
word is printed. So the names are written here once more, as plain data.

A copy can drift: ``tests/test_cli_imports.py`` checks that every entry here equals
what its registry or module holds, so a new backbone, head, dataset or sampler that
is not added here fails the suite instead of silently missing from ``--help``.
"""

from __future__ import annotations

#: ``vpipe.device.DEVICES``.
DEVICES = ("auto", "cpu", "cuda")

#: ``vpipe.data.registry.DATASETS``, sorted.
DATASETS = ("csv", "folder", "hmdb51", "kinetics", "synthetic", "ucf101")

#: ``vpipe.models.list_backbones()``.
BACKBONES = ("clip", "hoghofmbh", "i3d", "li3d", "r3d50", "resnet101", "resnet50", "vgg16", "videomae", "vjepa")

#: ``vpipe.models.heads.list_heads()``.
HEADS = ("bilstm-softagg", "deep-fusion", "st-manet", "vcm-sdd")

#: ``vpipe.video.plan.SAMPLERS``.
SAMPLERS = ("li3d", "uniform", "tsn", "dense")

#: ``vpipe.encode.classic.METHODS``.
ENCODE_METHODS = ("bof", "vlad", "fv")

#: ``vpipe.encode.budget.DEFAULT_MEMORY_BUDGET_TEXT``.
ENCODE_MEMORY_BUDGET = "3G"

#: ``vpipe.stages.encode.DEFAULT_PCA``.
DEFAULT_PCA = "auto"

#: ``vpipe.data.synthetic.DEFAULT_VIDEOS_PER_CLASS``.
SYNTHETIC_VIDEOS_PER_CLASS = 10
