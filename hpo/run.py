"""`python -m hpo.run`: the command's door is hpo.cli.run."""

import sys

from hpo.cli.run import main

if __name__ == "__main__":
    sys.exit(main())
