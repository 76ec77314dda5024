"""`python -m hpo.dashboard`: the command's door is hpo.cli.dashboard."""

import sys

from hpo.cli.dashboard import main

if __name__ == "__main__":
    sys.exit(main())
