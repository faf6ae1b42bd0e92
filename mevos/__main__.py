import sys

from mevos.cli import main

sys.exit(main())
