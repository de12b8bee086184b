"""`python -m npsemiseg` = the `npsemiseg` CLI."""
import sys

from npsemiseg.cli import main

sys.exit(main())
