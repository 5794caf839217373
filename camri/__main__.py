import sys

from camri.cli import main

sys.exit(main())
