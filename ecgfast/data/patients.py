"""Patient ids: cleaned once, scoped by the source they come from, compared as exact strings.

A patient id is an opaque string. ``ecgfast-prepare`` cleans it (surrounding whitespace stripped; an empty id
means "unknown", and the record is then its own patient) and stores it as given in the manifest's
``patient_id``, beside ``patient_ns``: the name of the source (SOURCE argument) it came from. Two records are
one patient when their namespaces and ids are equal, character for character (case-sensitive; a CSV's
``15709.0`` is read as ``15709``). So ``15709`` from two sources is two patients: databases number their
patients independently. Ids given by ``--patients`` (a record_id -> patient_id map over all sources) have the
empty namespace: one id space across every source, which is how records of two sources are made one patient.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

#: between a namespace and an id in a patient key; namespaces never contain it, so the first one splits a key
NS_SEPARATOR = ":"


def clean_patient_id(value: object) -> str | None:
    """``value`` as an id string without surrounding whitespace; None for None, NaN and blank strings."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bytes):
        value = value.decode()
    text = str(value).strip()
    return text or None


def patient_keys(patient_ids: Sequence[str] | np.ndarray, namespaces: Sequence[str] | np.ndarray | None = None
                 ) -> np.ndarray:
    """(N,) object array of patient keys: ``"<namespace>:<id>"``, or the id alone where the namespace is empty.

    Records are the same patient exactly when their keys are equal. Without namespaces (stores written before
    they existed) the key is the id.
    """
    ids = np.asarray(patient_ids, dtype=object).astype(str)
    if namespaces is None:
        return ids.astype(object)
    ns = np.asarray(namespaces, dtype=object).astype(str)
    if ns.shape != ids.shape:
        raise ValueError(f"{ns.shape[0]} namespaces for {ids.shape[0]} patient ids")
    scoped = np.char.add(np.char.add(ns, NS_SEPARATOR), ids)
    return np.where(ns == "", ids, scoped).astype(object)


def source_names(format_names: Sequence[str]) -> list[str]:
    """A namespace for each source, from its format name: ``["cinc", "ptbxl"]`` stays as it is, a format given
    more than once is numbered in argument order (``["cinc.1", "cinc.2", "ptbxl"]``)."""
    base = [(str(n) or "source").replace(NS_SEPARATOR, "_") for n in format_names]
    total, seen = Counter(base), Counter()
    names = []
    for b in base:
        seen[b] += 1
        names.append(f"{b}.{seen[b]}" if total[b] > 1 else b)
    return names
