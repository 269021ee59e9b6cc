"""The search algorithm, on any NNI model space: SparseMask's losses, the multi-input supernet module and the
strategy.

Nothing here knows the FDN, the run layer, the comparison, the baselines or the analysis: the strategy works on
every ``InputChoice(n_chosen=None)`` of any ``ModelSpace``.

* :mod:`.losses` -- pure loss functions (Eq. 2, the alpha rule, L1), each with its formula;
* :mod:`.supermodule` -- ``SparseMixedInput``, the one-shot module that replaces a multi-input ``InputChoice``;
* :mod:`.config` -- ``SparseMaskConfig``, the search's typed settings (defaults: the official search recipe, two
  parts of it measured and left off), and their validation;
* :mod:`.recipe` -- w in the evaluator's own optimizer (``arc_optimizer='shared'``) and nearly frozen BatchNorm;
* :mod:`.binarization` -- how far w has binarised (the undecided fraction per choice);
* :mod:`.searchdir` -- the strategy's run directory: config record, per-epoch checkpoint, result, resume;
* :mod:`.loop` -- ``SparseMaskLightningModule``, the search loop (loss, optimizer steps, epochs, checkpoints);
* :mod:`.strategy` -- the ``SparseMask`` NNI strategy.
"""
