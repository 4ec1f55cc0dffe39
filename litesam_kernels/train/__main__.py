"""``python -m litesam_kernels.train STAGE ...`` (what ``torchrun ... -m litesam_kernels.train`` runs)."""
import sys

from litesam_kernels.train.cli import main

sys.exit(main())
