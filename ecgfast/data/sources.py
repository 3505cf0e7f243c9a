"""Turn a SOURCE argument of ecgfast-prepare into a Reader: the format named, or detected from the files."""

from __future__ import annotations

import os
from pathlib import Path

from .patients import clean_patient_id
from .readers.base import Reader

FORMATS = ("auto", "wfdb", "cinc", "ptbxl", "ptbxl-subset", "mimic", "code15", "numpy", "synthetic")


def detect_format(source: str) -> str:
    """The format of ``source`` from its files: the index CSV of a corpus, .npy, or WFDB headers.

    Raises:
        FileNotFoundError: the source does not exist.
        ValueError: nothing recognisable in it.
    """
    if source.startswith("synthetic"):
        return "synthetic"
    p = Path(source)
    if not p.exists() and not p.with_suffix(".hea").exists():
        raise FileNotFoundError(f"source {source}: no such file or folder")
    if p.is_file() and p.suffix == ".npy":
        return "numpy"
    if p.is_dir():
        from .readers.ptbxl_subset import signals_file

        if (p / "ptbxl_database.csv").is_file():
            return "ptbxl"
        if signals_file(p) is not None:
            return "ptbxl-subset"
        if (p / "record_list.csv").is_file():
            return "mimic"
        if (p / "exams.csv").is_file():
            return "code15"
    from .readers.cinc import looks_like_cinc
    from .readers.wfdb_record import find_headers

    if find_headers(source):
        return "cinc" if looks_like_cinc(source) else "wfdb"
    raise ValueError(f"source {source}: no ptbxl_database.csv, record_list.csv, exams.csv, signals_<rate>hz.npy "
                     "with labels.csv, .npy or .hea files found")


def read_patient_map(path: str | os.PathLike) -> dict[str, str]:
    """record_id -> patient_id from a CSV with those two columns (extra columns ignored).

    Both are stripped of surrounding whitespace; rows where either is empty are left out.
    """
    try:
        import pandas as pd  # only here: the CLI imports this module for FORMATS

        df = pd.read_csv(path, dtype=str)
    except (OSError, ValueError) as exc:
        raise ValueError(f"patient map {path}: cannot read it as CSV: {exc}") from exc
    missing = {"record_id", "patient_id"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: needs columns record_id and patient_id, missing {sorted(missing)}")
    pairs = zip(df["record_id"].tolist(), df["patient_id"].tolist(), strict=True)
    cleaned = ((clean_patient_id(r), clean_patient_id(p)) for r, p in pairs)
    return {r: p for r, p in cleaned if r and p}


def open_source(source: str, fmt: str = "auto", patient_map: dict[str, str] | None = None, **options) -> Reader:
    """A Reader for ``source``.

    Args:
        source: folder, file, or ``synthetic[:N_PATIENTS]``.
        fmt: one of :data:`FORMATS`; "auto" detects it.
        patient_map: record id -> patient id for sources without patient ids (WFDB, CinC).
        options: format options: ``rate`` (ptbxl), ``scale`` (code15), ``seed`` (synthetic); for numpy and
            ptbxl-subset: ``fs``, ``lead_names``, ``units`` ("mV", "uV", "V" or "z"), ``patient_ids`` (a file
            of ids), and a labels CSV ``labels`` with ``record_id_column``, ``patient_id_column``,
            ``label_columns``, ``meta_columns``, ``split_column`` (see
            :func:`~ecgfast.data.readers.label_table.read_label_table`).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    fmt = detect_format(source) if fmt == "auto" else fmt
    if fmt == "wfdb":
        from .readers.wfdb_record import WFDBReader

        return WFDBReader(source, patient_ids=patient_map)
    if fmt == "cinc":
        from .readers.cinc import CinCReader

        return CinCReader(source, patient_ids=patient_map)
    if fmt == "ptbxl":
        from .readers.ptbxl import PTBXLReader

        return PTBXLReader(source, rate=int(options["rate"]) if options.get("rate") else None)
    if fmt == "mimic":
        from .readers.mimic import MIMICECGReader

        return MIMICECGReader(source)
    if fmt == "code15":
        from .readers.code15 import Code15Reader

        return Code15Reader(source, **({"scale": options["scale"]} if options.get("scale") else {}))
    if fmt == "ptbxl-subset":
        from .readers.ptbxl_subset import open_ptbxl_subset

        if options.get("labels"):
            raise ValueError(f"source {source}: a ptbxl-subset folder has its own labels.csv; --labels is for .npy")
        return open_ptbxl_subset(source, fs=options.get("fs"), lead_names=options.get("lead_names"),
                                 units=options.get("units"), record_id_column=options.get("record_id_column"),
                                 patient_id_column=options.get("patient_id_column"),
                                 label_columns=options.get("label_columns"), meta_columns=options.get("meta_columns"),
                                 patient_ids=options.get("patient_ids"), split_column=options.get("split_column"))
    if fmt == "numpy":
        from .readers.arrays import ArrayReader

        if not options.get("fs"):
            raise ValueError(f"source {source}: a .npy source needs --array-fs (its sampling rate)")
        kwargs = {"lead_names": options["lead_names"]} if options.get("lead_names") else {}
        units = options.get("units") or "mV"
        if options.get("labels"):
            return ArrayReader.from_label_table(
                source, options["labels"], float(options["fs"]), record_id_column=options.get("record_id_column"),
                patient_id_column=options.get("patient_id_column"), label_columns=options.get("label_columns"),
                meta_columns=options.get("meta_columns"),
                required_columns=[options["split_column"]] if options.get("split_column") else (),
                patient_ids=options.get("patient_ids"), units=units, **kwargs)
        if options.get("patient_id_column") or options.get("record_id_column"):
            raise ValueError(f"source {source}: --patient-id-column and --record-id-column need --labels (the CSV)")
        return ArrayReader(source, patient_ids=options.get("patient_ids"), fs=float(options["fs"]), units=units,
                           **kwargs)
    from .synthetic import SyntheticReader

    n = source.split(":", 1)[1] if ":" in source else options.get("n_patients", 200)
    return SyntheticReader(n_patients=int(n), seed=int(options.get("seed") or 0))
