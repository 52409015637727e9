"""Kept uploads (``covidxray serve --keep-uploads DIR``): stored under their sha256, bounded, DICOMs de-identified.

The folder is bounded by age (``retention_days``) and total size (``max_bytes``, oldest files deleted first).
A DICOM upload is stored only after :func:`deidentify_dicom` has removed what identifies the patient; one that
pydicom cannot parse is not stored at all. The file keeps the name ``<sha256 of the upload>.dcm`` so the audit
log's key still finds it.
"""

from __future__ import annotations

import io
import tempfile
import threading
import time
from pathlib import Path

from covidxray.web.uploads import STORED_SUFFIX, Upload

# DICOM PS3.15 Annex E basic profile, the attributes a chest radiograph's header commonly carries: emptied.
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "OtherPatientIDs",
    "OtherPatientNames",
    "OtherPatientIDsSequence",
    "IssuerOfPatientID",
    "MilitaryRank",
    "EthnicGroup",
    "PatientComments",
    "AdditionalPatientHistory",
    "MedicalRecordLocator",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "RequestingPhysician",
    "PhysiciansOfRecord",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "AccessionNumber",
    "StudyID",
    "RequestAttributesSequence",
    "StudyDescription",
    "SeriesDescription",
    "ImageComments",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyTime",
    "SeriesTime",
    "AcquisitionTime",
    "ContentTime",
    "AcquisitionDateTime",
)
UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


class DeidentificationError(ValueError):
    """A DICOM file pydicom cannot read or write back: it is not kept."""


def deidentify_dicom(data: bytes) -> bytes:
    """The DICOM file with patient, staff, institution, dates and private tags removed and its UIDs replaced
    by ones derived from them (so two images of one study still share a study UID).

    Raises :class:`DeidentificationError` if pydicom cannot parse or re-encode the file.
    """
    import pydicom
    from pydicom.uid import generate_uid

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)

        def scrub(dataset) -> None:
            for keyword in IDENTIFYING:
                if keyword in dataset:
                    elem = dataset.data_element(keyword)
                    if elem.VR == "SQ":
                        del dataset[keyword]
                    else:
                        elem.value = ""
            for elem in dataset:
                if elem.VR == "SQ":
                    for item in elem.value:
                        scrub(item)

        ds.remove_private_tags()
        scrub(ds)
        for keyword in UIDS:
            if keyword in ds and ds.data_element(keyword).value:
                ds.data_element(keyword).value = generate_uid(
                    entropy_srcs=[str(ds.data_element(keyword).value)]
                )
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "SOPInstanceUID" in ds and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "covidxray: PS3.15 basic profile subset"  # LO: at most 64 characters
        out = io.BytesIO()
        ds.save_as(out)
        return out.getvalue()
    except Exception as exc:  # pydicom raises many types on malformed files
        raise DeidentificationError(f"cannot de-identify this DICOM file: {exc}") from exc


class KeptUploads:
    """The ``--keep-uploads`` folder: :meth:`keep` stores, :meth:`prune` enforces the bounds (also at start)."""

    def __init__(self, folder: Path, retention_days: float | None = None, max_bytes: int | None = None):
        self.folder = Path(folder)
        self.retention_days = retention_days or None
        self.max_bytes = max_bytes or None
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._bytes = 0
        self._since_prune = 0
        self.prune()

    def _files(self) -> list[tuple[float, int, Path]]:
        out = []
        for p in self.folder.iterdir():
            if p.is_file() and not p.name.startswith("."):
                st = p.stat()
                out.append((st.st_mtime, st.st_size, p))
        return sorted(out)

    def prune(self, now: float | None = None) -> int:
        """Delete files older than ``retention_days``, then the oldest while over ``max_bytes``; the count."""
        with self._lock:
            files = self._files()
            now = time.time() if now is None else now
            removed = 0
            keep = []
            for mtime, size, p in files:
                if self.retention_days and now - mtime > self.retention_days * 86400:
                    p.unlink(missing_ok=True)
                    removed += 1
                else:
                    keep.append((mtime, size, p))
            total = sum(size for _, size, _ in keep)
            if self.max_bytes:
                for _, size, p in keep:
                    if total <= self.max_bytes:
                        break
                    p.unlink(missing_ok=True)
                    total -= size
                    removed += 1
            self._bytes = total
            return removed

    def keep(self, upload: Upload) -> Path | None:
        """Store ``upload`` as ``<sha256>.<ext>`` (DICOM de-identified; None when that is impossible)."""
        data = upload.data
        if upload.kind == "dicom":
            try:
                data = deidentify_dicom(data)
            except DeidentificationError:
                return None
        target = self.folder / f"{upload.sha256}{STORED_SUFFIX[upload.kind]}"
        if target.exists():
            return target
        with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".upload-", delete=False) as tmp:
            tmp.write(data)
        Path(tmp.name).replace(target)
        with self._lock:
            self._bytes += len(data)
            self._since_prune += 1
            due = self._since_prune >= 100 or (self.max_bytes is not None and self._bytes > self.max_bytes)
            if due:
                self._since_prune = 0
        if due:
            self.prune()
        return target if target.exists() else None
