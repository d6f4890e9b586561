"""spark-submit entry point of the `evaluate` stage: parse args -> load config -> build session -> run.

Run it through ../spark-submit.sh (evaluate); all logic lives in the longtail package.
"""

import sys

from longtail.cli import run_job
from longtail.stages import evaluate

if __name__ == "__main__":
    sys.exit(run_job("evaluate", sys.argv[1:], run=evaluate.run))
