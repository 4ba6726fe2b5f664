"""``python -m lr_mdp_experiments`` is ``lr-mdp``."""

import sys

from .cli import main

sys.exit(main())
