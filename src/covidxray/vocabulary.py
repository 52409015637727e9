"""The words every layer shares, defined once: the manifest's labels, the catch-all class, the weight
initialisation schemes and the splits. A leaf module (no torch, no pandas), so the command line can offer them as choices."""

from __future__ import annotations

LABELS = ("covid", "normal", "pneumonia")  # a manifest row's label; the default task's classes, in this order
REST = "rest"  # the class collecting every label a task does not list, e.g. ("covid", "rest")
INITS = ("default", "glorot", "he")  # weight initialisation schemes, see covidxray.models.init
SPLITS = ("train", "val", "test")  # a manifest row's split (covidxray.data.split), and COVIDx's split folders
EVALUATED_ROWS = (*SPLITS, "all")  # what `covidxray evaluate --split` takes: one split, or every row
