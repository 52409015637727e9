"""The words every layer shares, defined once: the manifest's labels, the catch-all class and the weight
initialisation schemes. A leaf module (no torch, no pandas), so the command line can offer them as choices."""

from __future__ import annotations

LABELS = ("covid", "normal", "pneumonia")  # a manifest row's label; the default task's classes, in this order
REST = "rest"  # the class collecting every label a task does not list, e.g. ("covid", "rest")
INITS = ("default", "glorot", "he")  # weight initialisation schemes, see covidxray.models.init
