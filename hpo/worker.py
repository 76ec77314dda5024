"""`python -m hpo.worker`: the command's door is hpo.cli.worker."""

import sys

from hpo.cli.worker import main

if __name__ == "__main__":
    sys.exit(main())
