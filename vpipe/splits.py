"""Split membership values used in manifests and plans.

It sits on the lowest floor because adapters (which list videos) and plans (which
choose their clips) both check it, and plans must not import adapters.
"""

SPLITS = ("train", "val", "test", "unused")
