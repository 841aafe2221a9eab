#!/usr/bin/env bash
# The MPIJob worker pods' entry point (PID 1): sshd, through which the launcher's horovodrun
# starts the training processes, and SIGTERM handling. Kubernetes sends SIGTERM to PID 1 only,
# so when a worker pod is stopped (preemption, node drain) this passes it on to the training
# processes in the pod, which vote to stop: every rank stops at the same step, rank 0 saves,
# all exit with 138. It then waits for them, within terminationGracePeriodSeconds, before the
# pod goes (and the launcher, restarted by the MPIJob, resumes from the run dir).
# Only as PID 1 of its own container: it signals every training process it can see.
set -uo pipefail

if (($$ != 1)); then
  echo "mpi_worker.sh: run it as a container's entry point (PID 1), not on a shared machine" >&2
  exit 2
fi

training_pids() {  # Horovod's workers carry HOROVOD_RANK in their environment
  local proc
  for proc in /proc/[0-9]*; do
    grep -qz '^HOROVOD_RANK=' "$proc/environ" 2>/dev/null && echo "${proc#/proc/}"
  done
}

stop_training() {
  local pids
  pids=$(training_pids)
  [[ -n "$pids" ]] && kill -TERM $pids 2>/dev/null
  while [[ -n "$(training_pids)" ]]; do sleep 1; done
  exit 0
}

trap stop_training TERM
/usr/sbin/sshd -De -f "${SSHD_CONFIG:-/home/app/.sshd_config}" &
wait
