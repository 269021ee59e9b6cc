"""Analysis: run directories -> DataFrame -> Table 1, Fig. 4, Fig. 5 (imported as nni_sparsemask.analysis)."""
