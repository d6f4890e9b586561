"""spark-submit entry point of the `maintain` stage: parse args -> load config -> build session -> run.

Run it through ../spark-submit.sh (maintain); all logic lives in the longtail package.
"""

import sys

from longtail.cli import run_job
from longtail.stages import maintain

if __name__ == "__main__":
    sys.exit(run_job("maintain", sys.argv[1:], run=maintain.run))
