"""spark-submit entry point of the `train` stage: parse args -> load config -> build session -> run.

Run it through ../spark-submit.sh (train); all logic lives in the longtail package.
"""

import sys

from longtail.cli import run_job
from longtail.stages import train

if __name__ == "__main__":
    sys.exit(run_job("train", sys.argv[1:], run=train.run))
