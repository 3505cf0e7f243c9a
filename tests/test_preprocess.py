"""Preprocessing: checks, resampling, filters, crop/pad and the int16 quantisation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal as sps

from ecgfast.data.preprocess import (
    PreprocessConfig,
    check_signal,
    dequantize,
    fit_length,
    preprocess,
    quantize,
    resample,
)
from ecgfast.data.record import ECGRecord, RecordError, RejectReason


def _ecg(t_samples: int = 5000, seed: int = 0, amp: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amp * rng.standard_normal((8, t_samples))).astype(np.float32)


@pytest.mark.parametrize("amp", [1e-2, 1.0, 30.0])
@pytest.mark.parametrize("offset", [0.0, 5.0, -7.0])
def test_quantize_never_clips_and_error_is_half_a_step(amp, offset):
    x = _ecg(amp=amp) + offset
    q, gain, baseline = quantize(x)
    assert q.dtype == np.int16
    assert q.max() < 32767 and q.min() > -32768  # nothing at the rails
    err = np.abs(dequantize(q, gain, baseline) - x).max()
    assert err <= 0.5 / gain * 1.01 + 1e-7 * np.abs(x).max()
    # 0 mV is representable exactly: zero padding decodes to 0.
    assert -32768 < baseline < 32767
    assert dequantize(np.array([baseline], np.int16), gain, baseline)[0] == 0.0


def test_quantize_uses_the_int16_range():
    q, _, _ = quantize(_ecg())
    assert int(q.max()) - int(q.min()) > 65000  # the finest gain at which nothing clips


def test_fit_length_crops_and_pads():
    x = _ecg(6000)
    y, valid = fit_length(x, 5000)
    assert y.shape == (8, 5000) and valid == 5000 and np.array_equal(y, x[:, :5000])
    y, valid = fit_length(x[:, :3000], 5000)
    assert valid == 3000 and np.array_equal(y[:, :3000], x[:, :3000]) and not y[:, 3000:].any()


@pytest.mark.parametrize("fs", [250.0, 257.0, 360.0, 400.0, 1000.0])
def test_resample_matches_scipy_polyphase_and_keeps_a_sine(fs):
    t = np.arange(int(fs * 10)) / fs
    x = np.tile(np.sin(2 * np.pi * 5.0 * t), (8, 1)).astype(np.float32)
    y = resample(x, fs, 500.0)
    assert y.shape == (8, 5000)
    t2 = np.arange(5000) / 500.0
    assert np.abs(y[:, 200:-200] - np.sin(2 * np.pi * 5.0 * t2)[200:-200]).max() < 0.01


def test_notch_removes_powerline_and_bandpass_removes_wander():
    fs = 500.0
    t = np.arange(5000) / fs
    ecg = np.sin(2 * np.pi * 8 * t)
    x = np.tile(ecg + 0.5 * np.sin(2 * np.pi * 50 * t) + 2.0 * np.sin(2 * np.pi * 0.1 * t), (8, 1)).astype(np.float32)
    rec = ECGRecord("r", "p", x, fs, "test")
    out = preprocess(rec, PreprocessConfig(bandpass=(0.5, 40.0), notch=50.0))
    y = dequantize(out.samples, out.gain, out.baseline)[0]
    f, pxx = sps.periodogram(y[500:-500], fs=fs)
    p50, p8, p01 = (pxx[np.argmin(np.abs(f - v))] for v in (50, 8, 0.1))
    assert p50 < 1e-3 * p8 and p01 < 1e-2 * p8


def test_preprocess_pads_short_records_and_keeps_valid_length():
    rec = ECGRecord("r", "p", _ecg(3500), 500.0, "test")
    out = preprocess(rec, PreprocessConfig())
    assert out.samples.shape == (8, 5000) and out.valid_length == 3500
    assert (out.samples[:, 3500:] == out.baseline).all()


def test_preprocess_resamples_to_store_rate():
    rec = ECGRecord("r", "p", _ecg(4096), 400.0, "test")
    out = preprocess(rec, PreprocessConfig())
    assert out.samples.shape == (8, 5000) and out.valid_length == 5000  # 10.24 s at 400 Hz, cropped to 10 s


@pytest.mark.parametrize("case,reason", [
    ("nan", RejectReason.NON_FINITE), ("inf", RejectReason.NON_FINITE), ("flat", RejectReason.FLAT_LEAD),
    ("clipped", RejectReason.SATURATED_LEAD), ("short", RejectReason.TOO_SHORT),
    ("fs0", RejectReason.BAD_SAMPLING_RATE)])
def test_check_signal_rejects_with_reason_naming_the_lead(case, reason):
    x, fs = _ecg(), 500.0
    if case == "nan":
        x[3, 100] = np.nan
    elif case == "inf":
        x[3, 100] = np.inf
    elif case == "flat":
        x[3] = 0.25
    elif case == "clipped":
        x[3] = np.clip(x[3] * 3, -2.0, 2.0)  # about half the samples at the rails
    elif case == "short":
        x = x[:, :2000]
    elif case == "fs0":
        fs = 0.0
    with pytest.raises(RecordError) as err:
        check_signal(x, fs, "rec42", PreprocessConfig())
    assert err.value.reason == reason
    assert "rec42" in str(err.value)
    if case in {"nan", "flat", "clipped"}:
        assert "V2" in str(err.value)  # row 3 is V2


def test_check_signal_accepts_a_real_plateau_shorter_than_the_limit():
    x = _ecg()
    x[1, 1000:1056] = x[1].min() - 0.1  # 112 ms flat at the minimum: an ST segment, not clipping
    check_signal(x, 500.0, "r", PreprocessConfig())


def test_config_validation():
    with pytest.raises(ValueError):
        PreprocessConfig(bandpass=(40.0, 300.0))
    with pytest.raises(ValueError):
        PreprocessConfig(fs=0)
    with pytest.raises(ValueError):
        PreprocessConfig(notch=260.0)
