"""spark-submit entry point of the `recommend` stage: parse args -> load config -> build session -> run.

Run it through ../spark-submit.sh (recommend); all logic lives in the longtail package.
"""

import sys

from longtail.cli import run_job
from longtail.stages import recommend

if __name__ == "__main__":
    sys.exit(run_job("recommend", sys.argv[1:], run=recommend.run))
