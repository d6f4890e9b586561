"""spark-submit entry point of the `pipeline` stage: parse args -> load config -> build session -> run.

Run it through ../spark-submit.sh (pipeline); all logic lives in the longtail package.
"""

import sys

from longtail.cli import run_job
from longtail.stages import pipeline

if __name__ == "__main__":
    sys.exit(run_job("pipeline", sys.argv[1:], run=pipeline.run))
