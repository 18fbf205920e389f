"""``python -m passtcore.run`` = the ``passtcore-run`` console script."""
import sys

from passtcore.run.process.cli import main

sys.exit(main())
