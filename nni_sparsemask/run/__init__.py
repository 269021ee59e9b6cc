"""The run layer: what turns a command into a run directory.

* :mod:`.config` -- the typed configs (data, model, train, search, eval, pretrain): the one place every default
  lives;
* :mod:`.registry` -- the strategies and decoders by name (SparseMask and the baselines);
* :mod:`.lightning` -- the Lightning module / NNI evaluator that trains a segmentation network;
* :mod:`.pipeline` -- loaders, backbone weights, building, training and evaluating a fixed network;
* :mod:`.pretrain` -- backbone pre-training on DigitScenes digits (cached);
* :mod:`.steps` -- the steps search / prune / retrain / evaluate, each writing a run directory;
* :mod:`.rundir` -- run directories: config checks on resume, atomic JSON, history;
* :mod:`.checkpoints` -- Lightning checkpoints written atomically (``AtomicCheckpointIO``); the file checks
  (``check_checkpoint``, ``load_checkpoint``: a broken file is one error line) are re-exported from
  :mod:`nni_sparsemask.checkpoint_files`;
* :mod:`.demo` -- the demo (search, retrain three networks, time them side by side);
* :mod:`.sideprocess` -- the demo's second process (``--split-cpu``): on a CPU, the retraining runs that do not wait for the search
  run there, beside it, each process with half the threads.
"""
