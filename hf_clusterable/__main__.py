"""`python -m hf_clusterable COMMAND ...`, the same as `hf-clusterable COMMAND ...`; also what
`accelerate launch -m hf_clusterable train --config RECIPE.yaml` runs on every process."""

import sys

from .cli.main import main


sys.exit(main())
