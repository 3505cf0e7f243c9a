"""``ecgfast-prepare``: the command line of the prepare pipeline (:mod:`ecgfast.prepare.pipeline`).

The pipeline and its readers load only after the arguments are read, so ``--help`` and argument errors answer at
once.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..data.sources import FORMATS


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def build_parser() -> argparse.ArgumentParser:
    """The ``ecgfast-prepare`` parser."""
    p = argparse.ArgumentParser(
        prog="ecgfast-prepare",
        description="Read ECG collections (WFDB, CinC, PTB-XL, MIMIC-IV-ECG, CODE-15%%, .npy, synthetic), check "
                    "and preprocess every record, and write one memory-mapped int16 store with a manifest. Exit "
                    "codes: 0 done, 1 no record accepted, 2 bad arguments or input, 4 disk full (rerun the same "
                    "command once there is room: finished shards are kept).",
        epilog="examples:\n  ecgfast-prepare /data/ptb-xl --out stores/ptbxl --split-by strat_fold\n"
               "  ecgfast-prepare /data/cinc2021/georgia /data/cinc2021/cpsc --out stores/cinc --workers 8\n"
               "  ecgfast-prepare ../shared/data/ecg/ptbxl-subset --out stores/ptbxl-subset\n"
               "  ecgfast-prepare synthetic:500 --out stores/synthetic",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="folder, record, .npy file, ptbxl-subset folder, or synthetic[:N_PATIENTS]")
    p.add_argument("--out", required=True, help="the store folder to write (new, empty, or made by ecgfast-prepare)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="source format (default: detect)")
    p.add_argument("--fs", type=float, help="store sampling rate, Hz (default: the sources' own rate where they all "
                   "have one, such as PTB-XL's records100/ or an array; else 500)")
    p.add_argument("--seconds", type=float, default=10.0, help="store record length, s (default 10)")
    p.add_argument("--min-seconds", type=float, default=5.0, help="reject records shorter than this (default 5)")
    p.add_argument("--bandpass", type=float, nargs=2, metavar=("LOW", "HIGH"), help="zero-phase band-pass, Hz")
    p.add_argument("--notch", type=float, help="zero-phase powerline notch at this frequency, Hz (50 or 60)")
    p.add_argument("--normalize", choices=("zscore",), help="zscore: each lead of each record to zero mean and unit "
                   "sd after the filters; the store holds z signals (how ptbxl-subset was made; lets z-scored and "
                   "millivolt sources share one store)")
    p.add_argument("--max-abs-mv", type=float, default=50.0,
                   help="reject a record with a lead beyond +-this many mV: implausible_amplitude (default 50)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--shard-size", type=int, default=1024, help="records per shard (default 1024)")
    p.add_argument("--split-by", choices=("auto", "hash", "strat_fold"), default="auto",
                   help="hash of patient id, PTB-XL strat_fold (9 val, 10 test), or auto (default): the source's own "
                        "split column where it has one (ptbxl-subset: strat_fold), else hash")
    p.add_argument("--split-column", help="split by this column of the records' meta (a labels CSV column, "
                                          "strat_fold): fold numbers (see --val-folds, --test-folds) or train/val/test")
    p.add_argument("--val-folds", type=int, nargs="+", help="column split: folds of the val split (default 9)")
    p.add_argument("--test-folds", type=int, nargs="+", help="column split: folds of the test split (default 10)")
    p.add_argument("--split-fractions", type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                   help="hash split: shares of train, val, test (default 0.8 0.1 0.1)")
    p.add_argument("--split-seed", type=int, help="hash split: seed of the patient hash (default 0)")
    p.add_argument("--patients", help="CSV with columns record_id, patient_id: one id space across all sources")
    p.add_argument("--rate", type=int, choices=(100, 500), help="PTB-XL: which files to read (default: 500 Hz where "
                   "records500/ is there, else 100)")
    arrays = p.add_argument_group(".npy sources and ptbxl-subset folders")
    arrays.add_argument("--array-fs", type=float, help="its sampling rate, Hz")
    arrays.add_argument("--array-leads", help="comma-separated lead names of its L axis (default I,II,V1..V6)")
    arrays.add_argument("--units", choices=("mV", "uV", "V", "z"),
                        help="unit of its values (default mV; ptbxl-subset: z). z: normalised signals (z-scored per "
                             "lead): amplitude checks in standard deviations, and the store records units z")
    arrays.add_argument("--patient-ids", help="a .npy or .txt with one patient id per record")
    arrays.add_argument("--labels", help="CSV with one row per record, in array order: labels, ids, meta")
    arrays.add_argument("--record-id-column", help="--labels column of unique record ids (e.g. ecg_id)")
    arrays.add_argument("--patient-id-column", help="--labels column of patient ids (default: none, each record "
                                                    "its own patient)")
    arrays.add_argument("--label-columns", help="comma-separated --labels columns that are labels "
                                                "(default: every column whose cells are all 0 or 1)")
    arrays.add_argument("--meta-columns", help="comma-separated --labels columns kept as meta (default: age,sex)")
    p.add_argument("--seed", type=int, default=0, help="synthetic source: generator seed")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a store or unfinished run at --out (only in a folder ecgfast-prepare made, only "
                        "its files)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ecgfast-prepare``. Exit codes: 0 done, 1 no record accepted, 2 bad arguments or input,
    4 the disk is full (rerun the same command once there is room: finished shards are kept)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    from ..data import store_folder
    from ..data.preprocess import PreprocessConfig
    from ..data.sources import open_source, read_patient_map
    from ..data.store import StoreError
    from .pipeline import SplitConfig, prepare_store

    try:
        if args.patients:
            store_folder.check_not_nested(args.out, [args.patients])
        patient_map = read_patient_map(args.patients) if args.patients else None
        options = {"rate": args.rate, "patient_ids": args.patient_ids, "fs": args.array_fs, "seed": args.seed,
                   "lead_names": _names(args.array_leads), "units": args.units, "labels": args.labels,
                   "record_id_column": args.record_id_column, "patient_id_column": args.patient_id_column,
                   "label_columns": _names(args.label_columns), "meta_columns": _names(args.meta_columns),
                   "split_column": args.split_column}
        readers = [open_source(s, args.format, patient_map=patient_map, **options) for s in args.sources]
        config = PreprocessConfig(fs=args.fs or _store_rate(readers), seconds=args.seconds,
                                  min_seconds=args.min_seconds, notch=args.notch, max_abs_mv=args.max_abs_mv,
                                  normalize=args.normalize,
                                  bandpass=tuple(args.bandpass) if args.bandpass else None)
        method = "column" if args.split_column else args.split_by
        given = {name for name, value in (("fractions", args.split_fractions), ("seed", args.split_seed),
                                          ("folds", args.val_folds or args.test_folds)) if value is not None}
        split = SplitConfig(method=method, fractions=tuple(args.split_fractions or (0.8, 0.1, 0.1)),
                            seed=args.split_seed or 0, val_folds=tuple(args.val_folds or (9,)),
                            test_folds=tuple(args.test_folds or (10,)), column=args.split_column or "strat_fold",
                            given=frozenset(given))
        report = prepare_store(readers, args.out, config, split, workers=args.workers, shard_size=args.shard_size,
                               patient_map=patient_map, overwrite=args.overwrite, progress=not args.quiet)
    except (FileNotFoundError, ValueError, StoreError, ImportError) as exc:
        print(f"ecgfast-prepare: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the disk (full, read-only, quota): the path is in the message (atomic_path)
        print(f"ecgfast-prepare: error: {exc}", file=sys.stderr)
        return 4 if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else 2
    print(f"ecgfast-prepare: {report.summary()}; report in {Path(args.out) / 'prepare_report.md'}")
    return 0 if report.accepted else 1


def _store_rate(readers: list) -> float:
    """The store rate when --fs is not given: the sources' one native rate, else 500 Hz (METHOD.md)."""
    rates = {getattr(r, "native_fs", None) for r in readers}
    if len(rates) == 1 and None not in rates:
        fs = float(rates.pop())
        logging.getLogger("ecgfast.prepare").info("store rate: %g Hz, the rate of the files read (--fs to change it)",
                                                  fs)
        return fs
    return 500.0


if __name__ == "__main__":
    sys.exit(main())
