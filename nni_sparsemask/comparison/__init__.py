"""The strategy comparison as an NNI HPO experiment.

* :mod:`.grid` -- the grid entries (strategy or decoder + its arguments): parse, expand, check;
* :mod:`.settings` -- the settings every entry shares (``TrialSettings``, the ``--preset`` values);
* :mod:`.trial` -- one entry end to end as an NNI trial (``python -m nni_sparsemask.comparison.trial``);
* :mod:`.plan` -- the checks before a launch: NNI's config, the grid, the trial settings (``ComparisonPlan``);
* :mod:`.compare` -- ``sparsemask compare``: launch, follow, report, resume;
* :mod:`.manager` -- NNI's manager kept on 127.0.0.1 (``loopback.js``) and stopped by its pid.
"""
