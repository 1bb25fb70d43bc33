#!/usr/bin/env bash
# Runs one llmos_jax experiment on every worker of a Cloud TPU VM pod slice.
#   launch/tpu_pod.sh TPU_NAME ZONE configs/clm/llama_1b.py gs://BUCKET/runs/l1b [--config.x=y ...]
# Ships this checkout's tracked files (a tarball over gcloud scp) to every worker, installs with
# the pinned constraints and the tpu extra, then runs the same `llmos train --distributed` there.
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
tarball=$(mktemp --suffix=.tar.gz)
trap 'rm -f "$tarball"' EXIT
git -C "$here" archive --format=tar.gz -o "$tarball" HEAD
gcloud compute tpus tpu-vm scp --zone "$zone" --worker=all "$tarball" "$tpu:~/llmos_jax.tar.gz"
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e; mkdir -p ~/llmos_jax && tar -xzf ~/llmos_jax.tar.gz -C ~/llmos_jax && cd ~/llmos_jax
  test -x .venv/bin/python || python3 -m venv .venv
  .venv/bin/pip install -q -c constraints.txt -e '.[tpu]'
  .venv/bin/llmos train --distributed --no-progress --config $config --workdir $workdir $*
"
