"""``python -m audiossl.cli``, as ``torchrun -m audiossl.cli`` and the tcmalloc re-exec run it."""

import sys

from audiossl.cli import main

if __name__ == "__main__":
    sys.exit(main())
