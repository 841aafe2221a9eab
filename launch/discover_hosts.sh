#!/usr/bin/env bash
# Host discovery for elastic Horovod (horovodrun --host-discovery-script): prints the hosts
# that may run workers now, one "host:slots" per line. Horovod runs it every few seconds: a
# host that disappears from the list is drained, one that appears gets workers (up to --max-np).
#
#   horovodrun -np 4 --min-np 2 --max-np 4 --host-discovery-script launch/discover_hosts.sh \
#       python -m sentiment_dist.train strategy=horovod_elastic hydra.run.dir=/shared/runs/train/job-1
#
# Where the hosts come from, first found:
#   HOSTS_FILE=path     a file of "host:slots" lines (comments and blank lines skipped) that
#                       you, or a cluster tool, keep up to date;
#   SLURM_JOB_NODELIST  the job's nodes (scontrol show hostnames), SLURM_NTASKS_PER_NODE slots each.
# On Kubernetes the MPI Operator writes its own (/etc/mpi/discover_hosts.sh): use that one.
set -euo pipefail

if [[ -n "${HOSTS_FILE:-}" ]]; then
  [[ -r "$HOSTS_FILE" ]] || { echo "discover_hosts.sh: cannot read HOSTS_FILE=$HOSTS_FILE" >&2; exit 1; }
  sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$HOSTS_FILE"
elif [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
  scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/\$/:${SLURM_NTASKS_PER_NODE:-1}/"
else
  echo "discover_hosts.sh: set HOSTS_FILE (a file of host:slots lines) or run inside a SLURM job" >&2
  exit 1
fi
