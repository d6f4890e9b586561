"""spark-submit entry point of the `ingest` stage: parse args -> load config -> build session -> run.

Run it through ../spark-submit.sh (ingest); all logic lives in the longtail package.
"""

import sys

from longtail.cli import run_job
from longtail.stages import ingest

if __name__ == "__main__":
    sys.exit(run_job("ingest", sys.argv[1:], run=ingest.run))
