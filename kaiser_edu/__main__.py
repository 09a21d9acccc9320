"""``python -m kaiser_edu`` is the ``kaiser-edu`` command."""

import sys

from kaiser_edu.cli import main

sys.exit(main())
