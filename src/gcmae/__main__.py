import sys

from gcmae.cli import main

sys.exit(main())
