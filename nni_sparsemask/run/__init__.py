"""The run layer: what turns a command into a run directory.

* :mod:`.config` -- the typed configs (data, model, train, search): the one place every default lives;
* :mod:`.registry` -- the strategies and decoders by name (SparseMask and the baselines);
* :mod:`.lightning` -- the Lightning module / NNI evaluator that trains a segmentation network;
* :mod:`.pipeline` -- loaders, backbone weights, building, training and evaluating a fixed network;
* :mod:`.pretrain` -- backbone pre-training on DigitScenes digits (cached);
* :mod:`.steps` -- the steps search / prune / retrain / evaluate, each writing a run directory;
* :mod:`.rundir` -- run directories: config checks on resume, atomic JSON, history;
* :mod:`.demo` -- the demo (search, retrain three networks, time them side by side).
"""
