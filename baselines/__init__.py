"""Baselines: search strategies and hand-designed decoders on the FDN space (imported as nni_sparsemask.baselines)."""
