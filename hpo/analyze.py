"""`python -m hpo.analyze`: the command's door is hpo.cli.analyze."""

import sys

from hpo.cli.analyze import main

if __name__ == "__main__":
    sys.exit(main())
