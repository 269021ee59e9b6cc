"""The search algorithm, on any NNI model space: SparseMask's losses, the multi-input supernet module and the
strategy.

Nothing here knows the FDN, the run layer, the comparison, the baselines or the analysis: the strategy works on
every ``InputChoice(n_chosen=None)`` of any ``ModelSpace``.

* :mod:`.losses` -- pure loss functions (Eq. 2, the alpha rule, L1), each with its formula;
* :mod:`.supermodule` -- ``SparseMixedInput``, the one-shot module that replaces a multi-input ``InputChoice``;
* :mod:`.config` -- ``SparseMaskConfig``, the search's typed settings, and their validation;
* :mod:`.binarization` -- how far w has binarised (the undecided fraction per choice);
* :mod:`.searchdir` -- the strategy's run directory: config record, per-epoch checkpoint, result, resume;
* :mod:`.strategy` -- the Lightning module and the ``SparseMask`` NNI strategy.
"""
