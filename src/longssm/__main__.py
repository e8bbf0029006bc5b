"""``python -m longssm``: the command line. A Ctrl-C that lands while the command line is still being imported ends
like any other Ctrl-C (one line, exit code 130), not with a traceback from inside an import."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:
    print("longssm: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
