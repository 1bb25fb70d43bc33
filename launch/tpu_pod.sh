#!/usr/bin/env bash
# Runs one llmos_jax experiment on every worker of a Cloud TPU VM pod slice.
#   launch/tpu_pod.sh TPU_NAME ZONE configs/clm/llama_1b.py gs://BUCKET/runs/l1b [--config.x=y ...]
# Each worker clones nothing: it syncs this checkout (rsync over gcloud ssh), installs with the
# pinned constraints and the tpu extra, then runs the same `llmos train --distributed` command.
# jax.distributed.initialize() discovers the pod's hosts itself. Re-running the script resumes
# from the latest checkpoint in the gs:// run directory.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.a.b=value ...]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
here=$(cd "$(dirname "$0")/.." && pwd)
remote_dir=llmos_jax
gcloud compute tpus tpu-vm scp --recurse --zone "$zone" --worker=all "$here" "$tpu:~/" >/dev/null
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e; cd ~/$(basename "$here")
  test -x .venv/bin/python || python3 -m venv .venv
  .venv/bin/pip install -q -c constraints.txt -e '.[tpu]'
  .venv/bin/llmos train --distributed --no-progress --config $config --workdir $workdir $*
"
