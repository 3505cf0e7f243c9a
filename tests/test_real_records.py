"""The 128 real records of ../shared/data/ecg: every one accounted for, amplitudes kept through the store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import wfdb
from scipy.signal import resample_poly

from ecgfast import LEADS
from ecgfast.data.leads import normalise_lead_name
from ecgfast.data.readers.cinc import CinCReader
from ecgfast.data.readers.wfdb_record import WFDBReader
from ecgfast.data.store import ECGStore
from ecgfast.prepare import prepare_store

# Three Chapman-Shaoxing/Ningbo records whose chest leads are all zero (electrodes off): unusable, rejected.
FLAT_CHEST_LEADS = {"JS11438", "JS20004", "JS20008"}


@pytest.fixture(scope="module")
def real_store(shared_ecg, tmp_path_factory):
    ids = pd.read_csv(shared_ecg / "cinc2021" / "ptbxl_patient_ids.csv", dtype=str)
    patient_map = dict(zip(ids["record"], ids["ptbxl_patient_id"], strict=False))
    out = tmp_path_factory.mktemp("real") / "store"
    report = prepare_store([CinCReader(str(shared_ecg / "cinc2021")), WFDBReader(str(shared_ecg / "ptbdb"))], out,
                           workers=2, shard_size=32, patient_map=patient_map, progress=False)
    return report, ECGStore(out, verify=True)


def test_every_real_record_is_accounted_for(real_store, shared_ecg):
    report, store = real_store
    n_files = len(pd.read_csv(shared_ecg / "records.csv"))
    assert report.found == n_files == 128
    assert report.accepted + report.rejected == report.found
    assert {r["record_id"] for r in report.rejects} == FLAT_CHEST_LEADS
    assert report.by_reason == {"flat_lead": 3}
    assert len(store) == 125


def test_round_trip_amplitudes_match_wfdb_within_a_quantisation_step(real_store, shared_ecg):
    _, store = real_store
    m = store.manifest
    for i in range(len(store)):
        rec = wfdb.rdrecord(m["source"].iat[i])
        names = [normalise_lead_name(n) for n in rec.sig_name]
        ref = rec.p_signal[:, [names.index(lead) for lead in LEADS]].T  # (8, T) mV
        if rec.fs != store.fs:  # s0010_re: 1000 Hz -> 500 Hz, compare with scipy's polyphase result
            ref = resample_poly(ref, int(store.fs), int(rec.fs), axis=1)
        n = int(store.valid_length[i])
        x = store.read_mv([i])[0]
        err = np.abs(x[:, :n] - ref[:, :n]).max()
        assert err <= 0.5 / store.gain[i] + 1e-6, (m["record_id"].iat[i], err)
        assert (x[:, n:] == 0).all()


def test_real_metadata_labels_and_patients(real_store):
    _, store = real_store
    m = store.manifest.set_index("record_id")
    assert m.loc["HR06000", "patient_id"] == "5028"  # from the PTB-XL patient map
    assert m.loc["E00271", "patient_id"] == "E00271"  # no patient id known: the record is its own patient
    assert store.label("dx:59118001", fill=0)[store.manifest["record_id"] == "E00271"][0] == 1.0
    lengths = dict(zip(store.manifest["record_id"], store.valid_length, strict=False))
    assert lengths["s0010_re"] == 5000  # 38.4 s cropped to the store's 10 s
    assert min(lengths.values()) == 5000  # every real record is at least 10 s


def test_pretraining_steps_on_the_real_store(real_store, tmp_path):
    """Three steps of the real loop on real signals (records of other lengths cropped or zero-padded, most patients
    with one ECG): no step skipped, finite losses, a checkpoint."""
    from ecgfast.pretrain import load_config, pretrain

    _, store = real_store
    config = load_config(overrides={"store": str(store.path), "out": str(tmp_path / "run"), "model": "tiny",
                                    "batch_size": 8, "max_steps": 3, "workers": 0, "progress": False,
                                    "warmup_epochs": 0.1, "lr": 1e-3})
    summary = pretrain(config)
    assert summary["steps"] == 3 and summary["skipped"] == 0
    assert np.isfinite(summary["losses"]).all()
    assert (tmp_path / "run" / "checkpoints" / "ckpt-00000003" / "model.safetensors").is_file()
