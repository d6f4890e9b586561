"""spark-submit entry point of the `encode` stage: parse args -> load config -> build session -> run.

Run it through ../spark-submit.sh (encode); all logic lives in the longtail package.
"""

import sys

from longtail.cli import run_job
from longtail.stages import encode

if __name__ == "__main__":
    sys.exit(run_job("encode", sys.argv[1:], run=encode.run))
