"""Synthetic DICOM for tests, benchmarks and notebooks: CT-like phantoms, made with pydicom.

Every image carries noise, so no two share a run of pixel bytes, and every UID is fresh
unless given. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)


@dataclass(frozen=True)
class Patient:
    patient_id: str = "PAT-0001"
    name: str = "Doe^Jane"
    birth_date: str = "19700101"
    sex: str = "F"


def ct_phantom(size: int, z: float = 0.5, rng: np.random.Generator | None = None) -> np.ndarray:
    """A CT-like slice in stored values (HU + 1024), int16: body, lungs, spine, noise."""
    rng = rng or np.random.default_rng()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    hu = np.full((size, size), -1000.0, dtype=np.float32)  # air
    hu[(xx / 0.42) ** 2 + (yy / 0.32) ** 2 < 1] = 40.0  # soft tissue
    for cx in (-0.17, 0.17):  # lungs, shrinking towards the ends of the volume
        r = 0.11 * (1.0 - abs(z - 0.5))
        hu[((xx - cx) / r) ** 2 + ((yy + 0.02) / (1.5 * r)) ** 2 < 1] = -850.0
    hu[(xx / 0.05) ** 2 + ((yy - 0.2) / 0.05) ** 2 < 1] = 700.0  # vertebra
    hu += rng.normal(0.0, 12.0, hu.shape).astype(np.float32)
    return np.clip(hu + 1024.0, 0, 4095).astype(np.int16)


def ct_instance(
    patient: Patient,
    study_uid: str,
    series_uid: str,
    number: int,
    size: int = 512,
    series_number: int = 1,
    study_date: str = "20240115",
    accession: str = "ACC-0001",
    rng: np.random.Generator | None = None,
    z: float = 0.5,
    frame_of_reference: str | None = None,
    hu: np.ndarray | None = None,
) -> Dataset:
    """One CT Image Storage instance, explicit VR little endian, with a file meta header."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = accession
    ds.Modality = "CT"
    ds.Manufacturer = "support-node synthetic"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyDescription = "CT CHEST"
    ds.SeriesDescription = f"AXIAL {series_number}"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "1.0"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [-250.0, -250.0, float(number)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    # one frame of reference per series, as a scanner writes it (DICOM SEG relies on it)
    ds.FrameOfReferenceUID = frame_of_reference or generate_uid(entropy_srcs=[series_uid])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if hu is not None:
        size = int(hu.shape[0])
    ds.Rows = ds.Columns = size
    ds.PixelSpacing = [round(500.0 / size, 4)] * 2
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    pixels = (ct_phantom(size, z, rng) if hu is None
              else np.clip(np.rint(hu) + 1024.0, 0, 4095).astype(np.int16))
    ds.PixelData = pixels.tobytes()
    return ds


def ct_study(
    patient: Patient | None = None,
    series: int = 3,
    per_series: int = 4,
    size: int = 64,
    seed: int = 0,
    study_uid: str | None = None,
) -> list[Dataset]:
    """A study of ``series`` CT series with ``per_series`` slices each."""
    patient = patient or Patient()
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    out = []
    for s in range(1, series + 1):
        series_uid = generate_uid()
        for i in range(1, per_series + 1):
            out.append(ct_instance(patient, study_uid, series_uid, i, size=size, series_number=s,
                                   rng=rng, z=i / (per_series + 1)))
    return out


def ct_series(n: int, size: int = 512, patient: Patient | None = None, seed: int = 0
              ) -> Iterator[Dataset]:
    """``n`` slices of one CT series (lazily, for benchmarks of hundreds of 512² images)."""
    patient = patient or Patient()
    rng = np.random.default_rng(seed)
    study_uid, series_uid = generate_uid(), generate_uid()
    for i in range(1, n + 1):
        yield ct_instance(patient, study_uid, series_uid, i, size=size, rng=rng, z=i / (n + 1))


def write(ds: Dataset, folder: Path, name: str | None = None) -> Path:
    """Writes ``ds`` as a Part-10 file (preamble, meta) and returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{UID(ds.SOPInstanceUID)}.dcm")
    ds.save_as(path, enforce_file_format=True)
    return path


def labelled_series(hu: np.ndarray, masks: np.ndarray, patient: Patient | None = None,
                    study_uid: str | None = None, names: tuple[str, ...] = ("lesion",)
                    ) -> tuple[list[Dataset], Dataset]:
    """A CT series of the HU slices ``hu`` (N, size, size) and the DICOM SEG of ``masks``
    (N, size, size; value k = segment k), as a hospital's annotation tool would send it."""
    from pipelines import dicom_seg

    patient = patient or Patient()
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_of_reference = generate_uid()
    images = [ct_instance(patient, study_uid, series_uid, i + 1, frame_of_reference=
                          frame_of_reference, hu=slice_) for i, slice_ in enumerate(hu)]
    seg = dicom_seg.make(images, list(masks), list(names), manufacturer="Annotation station",
                         algorithm="manual", series_description="Lesion annotations")
    return images, seg
