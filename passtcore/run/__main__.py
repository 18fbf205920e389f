"""``python -m passtcore.run`` = the ``passtcore-run`` console script."""
import sys

from passtcore.run.cli import main

sys.exit(main())
