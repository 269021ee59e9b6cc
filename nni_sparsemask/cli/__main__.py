"""``python -m nni_sparsemask.cli``: the ``sparsemask`` command."""
import sys

from nni_sparsemask.cli import main

sys.exit(main())
