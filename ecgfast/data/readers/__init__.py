"""One reader per source format, all yielding :class:`~ecgfast.data.record.ECGRecord`."""
