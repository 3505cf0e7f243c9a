"""The ECG data layer: readers, preprocessing, the memory-mapped int16 store, splits, synthetic corpus."""
