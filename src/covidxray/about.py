"""What covidxray says about itself on every surface: its version and the not-for-clinical-use notice.

A leaf module, so that reports, the web app and the command line can quote it without importing the package's
public face (:func:`covidxray.load_model`).
"""

from __future__ import annotations

__version__ = "0.1.0"

NOT_FOR_CLINICAL_USE = (
    "Research use only: covidxray is not a medical device and must not be used for clinical diagnosis."
)
