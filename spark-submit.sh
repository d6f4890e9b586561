#!/usr/bin/env bash
# longtail launcher: ./spark-submit.sh [STAGE] [--conf FILE] [--set key=value ...] [spark-submit options]
# With no stage it runs `pipeline` in local mode on the embedded (generated) sample.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${LONGTAIL_PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$HERE/.venv/bin/python" ]]; then PY="$HERE/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi
# The stages and their help come from the package (longtail.stages.STAGES), the one list of them.
STAGE_LINES="$(PYTHONPATH="$HERE/lib${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m longtail.stages)" || {
  echo "spark-submit.sh: cannot import longtail with $PY; run the README's set-up command first" >&2; exit 2; }
STAGES="$(cut -f1 <<<"$STAGE_LINES" | tr '\n' ' ')"
# spark-submit options that take no value; every other --option passes through with its value.
# (--verbose is longtail's; spark-submit's own verbose output is still there as -v.)
SPARK_FLAGS=" -v --supervise --kill --status --version "

usage() {
  cat <<EOF
Usage: ./spark-submit.sh [STAGE] [longtail options] [spark-submit options]

Stages (default: pipeline):
$(awk -F'	' '{printf "  %-16s %s\n", $1, $2}' <<<"$STAGE_LINES")

longtail options:
  --conf FILE        a YAML config applied over conf/base.yaml (repeatable)
  --set KEY=VALUE    override one config key, e.g. --set recommend.k=20 (repeatable)
  --run-id ID        the run id recorded in the runs table (default: generated)
  --delta-spark      use the delta-spark engine: adds the Delta connector (--packages, resolved
                     once into the Ivy cache \$LONGTAIL_IVY_DIR, default ~/.ivy2), its extension and
                     catalog, and --set lake.engine=delta-spark
  --s3a              add Hadoop's S3A connector (hadoop-aws and the AWS SDK, resolved once into the
                     same Ivy cache) for a lake.root on s3a://; the endpoint and credentials come
                     from --conf spark.hadoop.fs.s3a.* or the environment (AWS_*), both engines
  --verbose          show longtail's full log (INFO, DEBUG) on the console too
  -h, --help         this help

The console shows stage progress, warnings and results. The full log of a run (longtail's records
and the Spark JVM's warnings) goes to <lake.root>/logs/<run_id>.log, or for a lake on an object
store to \$LONGTAIL_LOG_DIR (default: the temp folder's longtail-logs/); its path is printed at
the end. Spark's JVM logging is set by conf/spark/log4j2.properties (LONGTAIL_LOG4J to use
another file, LONGTAIL_LOG4J= for Spark's own default).

Every other option goes to spark-submit unchanged, e.g. --master yarn, --deploy-mode client,
--conf spark.executor.memory=8g (a --conf whose value contains '=' is a Spark setting),
--delta-spark, --properties-file FILE, --archives env.tar.gz#environment.
In local mode (the default, --master local[*]) conf/spark/local.conf is used unless you pass
--properties-file. With any other master the longtail package is zipped to build/longtail.zip
and shipped with --py-files.

Environment: LONGTAIL_PYTHON (the Python to use; default .venv/bin/python, else python3),
SPARK_HOME (use that Spark's spark-submit instead of pyspark's own), LONGTAIL_LOG_DIR, LONGTAIL_LOG4J.
EOF
}

stage=""
delta_spark=0
s3a=0
ours=()
spark=()
master=""
props=""
pyfiles=""
while [[ $# -gt 0 ]]; do
  arg="$1"
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --delta-spark) delta_spark=1; shift ;;
    --s3a) s3a=1; shift ;;
    --set|--run-id)
      [[ $# -ge 2 ]] || { echo "spark-submit.sh: $arg needs a value" >&2; exit 2; }
      ours+=("$arg" "$2"); shift 2 ;;
    --set=*|--run-id=*) ours+=("$arg"); shift ;;
    --verbose) ours+=("$arg"); shift ;;
    --conf)
      [[ $# -ge 2 ]] || { echo "spark-submit.sh: --conf needs a value" >&2; exit 2; }
      if [[ "$2" == *=* ]]; then spark+=("--conf" "$2"); else ours+=("--conf" "$2"); fi
      shift 2 ;;
    --master) master="$2"; shift 2 ;;
    --master=*) master="${arg#--master=}"; shift ;;
    --properties-file) props="$2"; shift 2 ;;
    --py-files) pyfiles="$2"; shift 2 ;;
    -*)
      if [[ "$SPARK_FLAGS" == *" $arg "* || "$arg" == *=* ]]; then spark+=("$arg"); shift
      else
        [[ $# -ge 2 ]] || { echo "spark-submit.sh: $arg needs a value" >&2; exit 2; }
        spark+=("$arg" "$2"); shift 2
      fi ;;
    *)
      if [[ -z "$stage" && " $STAGES " == *" $arg "* ]]; then stage="$arg"; shift
      else echo "spark-submit.sh: unknown stage or argument '$arg' (stages: $STAGES; see --help)" >&2; exit 2
      fi ;;
  esac
done
stage="${stage:-pipeline}"

if [[ "$delta_spark" == 1 || "$s3a" == 1 ]]; then
  # The coordinates and confs live in one place: longtail.core.session.connector_conf().
  while IFS= read -r setting; do [[ -n "$setting" ]] && spark+=("--conf" "$setting"); done < <(
    PYTHONPATH="$HERE/lib${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c \
      'import sys; from longtail.core.session import connector_conf
print("\n".join(f"{k}={v}" for k, v in connector_conf(delta_spark=sys.argv[1] == "1", s3a=sys.argv[2] == "1").items()))' \
      "$delta_spark" "$s3a")
fi
[[ "$delta_spark" == 1 ]] && ours+=("--set" "lake.engine=delta-spark")

if [[ -n "${SPARK_HOME:-}" && -x "$SPARK_HOME/bin/spark-submit" ]]; then
  SUBMIT="$SPARK_HOME/bin/spark-submit"
else
  SUBMIT="$("$PY" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit"))')" || {
    echo "spark-submit.sh: pyspark is not installed for $PY; run the README's set-up command first" >&2; exit 2; }
fi

# The master: --master, else spark.master from the properties file, else local mode.
if [[ -z "$master" && -n "$props" && -f "$props" ]]; then
  master="$(awk '$1 == "spark.master" {print $2}' "$props" | tail -n 1)"
fi
if [[ -z "$master" && -n "${SPARK_CONF_DIR:-}" && -f "$SPARK_CONF_DIR/spark-defaults.conf" ]]; then
  master="$(awk '$1 == "spark.master" {print $2}' "$SPARK_CONF_DIR/spark-defaults.conf" | tail -n 1)"
fi
master="${master:-local[*]}"
args=(--master "$master")

if [[ "$master" == local* ]]; then
  args+=(--properties-file "${props:-$HERE/conf/spark/local.conf}")
  [[ -n "$pyfiles" ]] && args+=(--py-files "$pyfiles")
else
  [[ -n "$props" ]] && args+=(--properties-file "$props")
  # Ship the package to the executors as a zip on --py-files (pure Python: zipimport works).
  mkdir -p "$HERE/build"
  "$PY" - "$HERE/lib" "$HERE/build/longtail.zip" <<'PYEOF'
import os, sys, zipfile
lib, out = sys.argv[1], sys.argv[2]
tmp = out + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
    for root, dirs, files in os.walk(os.path.join(lib, "longtail")):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if not f.endswith(".pyc"):
                p = os.path.join(root, f)
                z.write(p, os.path.relpath(p, lib))
os.replace(tmp, out)
PYEOF
  args+=(--py-files "$HERE/build/longtail.zip${pyfiles:+,$pyfiles}")
fi

# The driver imports longtail from lib/; local-mode Python workers inherit this environment.
export PYTHONPATH="$HERE/lib${PYTHONPATH:+:$PYTHONPATH}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$PY}"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PY}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
# The model is loaded in every Python worker: no weight-loading progress bars or advice on the console.
export TRANSFORMERS_VERBOSITY="${TRANSFORMERS_VERBOSITY:-error}"
export HF_HUB_DISABLE_PROGRESS_BARS="${HF_HUB_DISABLE_PROGRESS_BARS:-1}"
export TRANSFORMERS_NO_ADVISORY_WARNINGS="${TRANSFORMERS_NO_ADVISORY_WARNINGS:-1}"

# Pre-flight: validate the arguments and the config before any JVM starts; it prints the run id
# and the run's log file.
preflight="$(PYTHONPATH="$PYTHONPATH" "$PY" -c 'import sys; from longtail.cli import check_args; sys.exit(check_args(sys.argv[1], sys.argv[2:]))' \
  "$stage" "${ours[@]}")" || exit $?
IFS=$'\t' read -r run_id log_file <<<"$preflight"
ours+=(--run-id "$run_id")
# Spark's JVM log: WARN, into the run's log file as well (conf/spark/log4j2.properties says which
# warnings stay off the console and why). SPARK_SUBMIT_OPTS reaches the driver JVM in client mode.
log4j="${LONGTAIL_LOG4J-$HERE/conf/spark/log4j2.properties}"
jvm_opts=""
if [[ -n "$log4j" ]]; then
  mkdir -p "$(dirname "$log_file")"
  jvm_opts="-Dlog4j2.configurationFile=file:$log4j -Dlongtail.log.file=$log_file"
fi
# MLlib (ALS) first tries a native BLAS/LAPACK (libblas.so.3, liblapack.so.3); where they are not
# installed, its JNI loader prints "netlib-blas: JNI_OnLoad: dlopen(libblas.so.3) failed" straight to
# stderr (native code: no logger can route it) and falls back to the pure-Java implementation. On
# such machines skip the native attempt: the same results without the noise. Installing
# libopenblas0 (Debian/Ubuntu) makes ALS faster and this check then leaves native BLAS on.
if libs="$( (ldconfig -p || /sbin/ldconfig -p) 2>/dev/null)" && [[ -n "$libs" ]]; then
  for lib in blas lapack; do
    [[ "$libs" == *"lib$lib.so.3"* ]] || jvm_opts+=" -Ddev.ludovic.netlib.$lib.allowNative=false"
  done
fi
[[ -n "$jvm_opts" ]] && export SPARK_SUBMIT_OPTS="$jvm_opts ${SPARK_SUBMIT_OPTS:-}"

job="$HERE/jobs/${stage//-/_}.py"

exec "$SUBMIT" "${args[@]}" "${spark[@]}" "$job" "${ours[@]}"
