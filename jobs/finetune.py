"""spark-submit entry point of the `finetune` stage: parse args -> load config -> build session -> run.

Run it through ../spark-submit.sh (finetune); all logic lives in the longtail package.
"""

import sys

from longtail.cli import run_job
from longtail.stages import finetune

if __name__ == "__main__":
    sys.exit(run_job("finetune", sys.argv[1:], run=finetune.run))
