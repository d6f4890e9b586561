"""spark-submit entry point of the `generate-sample` stage: parse args -> load config -> build session -> run.

Run it through ../spark-submit.sh (generate-sample); all logic lives in the longtail package.
"""

import sys

from longtail.cli import run_job
from longtail.stages import generate_sample

if __name__ == "__main__":
    sys.exit(run_job("generate-sample", sys.argv[1:], run=generate_sample.run))
