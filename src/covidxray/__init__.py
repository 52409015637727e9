"""covidxray: honest COVID-19 / pneumonia / normal chest X-ray classifiers. Research use only, not for clinical diagnosis."""

from __future__ import annotations

from covidxray.about import NOT_FOR_CLINICAL_USE, __version__

__all__ = ["NOT_FOR_CLINICAL_USE", "__version__", "load_model"]


def load_model(path=None, backend: str = "torch", tta: int | None = None, **options):
    """Load a saved model bundle (or the shipped default when ``path`` is None) as a predictor.

    ``path`` may be a list of bundles: an ensemble averaging their probabilities (same classes required).
    ``tta=N`` averages over N fixed test-time views (zoom, gamma, shifts, flip; about N times slower).
    Further options (``strict``, ``operating_point_from``) go to
    :func:`covidxray.prediction.predictor.load_predictor`.

    ``predictor.predict(image_or_path)`` and ``predictor.predict_batch(...)`` return typed results.
    """
    from covidxray.prediction.predictor import load_predictor

    return load_predictor(path, backend=backend, tta=tta, **options)
