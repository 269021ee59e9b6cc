"""The strategy comparison as an NNI HPO experiment.

* :mod:`.grid` -- the grid entries (strategy or decoder + its arguments): parse, expand, check;
* :mod:`.trial` -- one entry end to end as an NNI trial (``python -m nni_sparsemask.comparison.trial``);
* :mod:`.compare` -- ``sparsemask compare``: config checks, launch, follow, report, resume;
* :mod:`.manager` -- NNI's manager kept on 127.0.0.1 (``loopback.js``) and stopped by its pid.
"""
