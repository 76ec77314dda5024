"""`python -m hpo.validate`: the command's door is hpo.cli.validate."""

import sys

from hpo.cli.validate import main

if __name__ == "__main__":
    sys.exit(main())
