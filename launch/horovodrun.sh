#!/usr/bin/env bash
# Run sentiment-dist under Horovod: one process per GPU, started by horovodrun.
#
#   launch/horovodrun.sh -np N [-H host1:n1,host2:n2 | --hostfile FILE] [horovodrun flags] [--] [overrides...]
#
# runs
#
#   horovodrun <those horovodrun args> --gloo ${PYTHON:-python} -m sentiment_dist.train strategy=horovod <overrides>
#
# One machine with 4 GPUs (horovodrun defaults to -H localhost:N):
#   launch/horovodrun.sh -np 4 dataset=imdb dataset.path=/data/IMDB_Dataset.csv trainer.epochs=4
# Two machines with 2 GPUs each (passwordless ssh between them, the same
# checkout and venv at the same path, and a shared run dir):
#   launch/horovodrun.sh -np 4 -H host1:2,host2:2 paths.log_dir=/shared/runs
#   launch/horovodrun.sh -np 4 --hostfile hosts.txt paths.log_dir=/shared/runs   # lines "host1 slots=2"
# Elastic (workers may die and come back; strategy=horovod_elastic is chosen for you; the run dir
# must be given, on a filesystem every host sees):
#   HOSTS_FILE=hosts.txt launch/horovodrun.sh -np 4 --min-np 2 --max-np 4 \
#       --host-discovery-script launch/discover_hosts.sh hydra.run.dir=/shared/runs/train/job-1
#
# Where horovodrun's arguments end: at `--`, or at the first Hydra override
# (an argument containing `=`, or starting with `+` or `~`). Anything before
# that is passed to horovodrun; a bare word there is the value of the option
# before it (-np 4, -H a:2,b:2). Hydra flags such as `-m` (multirun) must come
# after `--`: launch/horovodrun.sh -np 2 -- -m model=lstm,bilstm
#
# Environment:
#   HOROVOD_CONTROLLER=mpi      use --mpi instead of --gloo (Horovod built with MPI,
#                               i.e. mpicxx was on PATH when launch/build_horovod.sh ran;
#                               the Docker image is). Passing --gloo/--mpi yourself wins.
#   SENTIMENT_DIST_ENTRY=...    another entry point, e.g. sentiment_dist.finetune
#   PYTHON=...                  the interpreter the workers run (default: python on PATH)
#   SENTIMENT_DIST_EXIT_FILE=.. where the chief writes the job's own exit code (138 preempted, 2 bad
#                               input): horovodrun itself exits 1 whatever its workers' codes, and
#                               this script exits with that code instead. Default: a temporary file,
#                               which rank 0 can write when it runs on this host (-H starts with it);
#                               otherwise give a path on a shared filesystem.
#   NCCL_SOCKET_IFNAME, NCCL_IB_DISABLE, NCCL_DEBUG, HOROVOD_GLOO_IFACE: network settings, passed on
#                               to every worker (horovodrun forwards the environment); on machines
#                               with several interfaces, name the one the workers reach each other on.
#
# Preemption: a SIGTERM (SLURM, Kubernetes, kill) goes to horovodrun, which passes it to every
# worker and kills them 5 s later (Horovod's fixed grace): the workers agree on a step, rank 0
# saves there, and all exit with 138; rerun with the same hydra.run.dir to continue.
#
# GPUs: each process pins the GPU of its local rank. For NCCL all-reduce, Horovod
# must be built with HOROVOD_GPU_OPERATIONS=NCCL (launch/build_horovod.sh honours it;
# the Docker image is built that way); otherwise GPU tensors are reduced through
# the CPU with Gloo/MPI. `horovodrun --check-build` shows what a build supports.
#
# Only rank 0 writes the run dir; on several machines, point paths.log_dir at a
# filesystem every machine sees, or resuming (hydra.run.dir=<run dir>) will not work.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

if (($# == 0)); then
  usage >&2
  exit 2
fi

horovod_args=()
controller_given=0
while (($#)); do
  case "$1" in
    --) shift; break ;;
    -h|--help) usage; exit 0 ;;
    --gloo|--mpi|--jsrun) controller_given=1; horovod_args+=("$1"); shift ;;
    -*) horovod_args+=("$1"); shift ;;
    *=*|+*|~*) break ;;                    # the first Hydra override
    *) horovod_args+=("$1"); shift ;;      # the value of the option before it
  esac
done

elastic=0
for arg in "${horovod_args[@]}"; do
  case "$arg" in --min-np|--max-np|--host-discovery-script|--min-num-proc|--max-num-proc) elastic=1 ;; esac
done

if ((controller_given == 0)); then
  case "${HOROVOD_CONTROLLER:-gloo}" in
    gloo) horovod_args+=(--gloo) ;;
    mpi) horovod_args+=(--mpi) ;;
    *) echo "horovodrun.sh: HOROVOD_CONTROLLER=${HOROVOD_CONTROLLER} is unknown; use gloo or mpi." >&2; exit 2 ;;
  esac
fi

# strategy=horovod goes just before the first override: Hydra's own flags (-m,
# --cfg job) must precede every override. A strategy you give yourself wins.
flags=0
strategy=(strategy=horovod)
((elastic)) && strategy=(strategy=horovod_elastic)
for arg in "$@"; do
  case "$arg" in *=*|+*|~*) break ;; esac
  flags=$((flags + 1))
done
for arg in "$@"; do
  case "$arg" in strategy=*) strategy=() ;; esac
done
command=(horovodrun "${horovod_args[@]}" "${PYTHON:-python}" -m "${SENTIMENT_DIST_ENTRY:-sentiment_dist.train}"
         "${@:1:flags}" "${strategy[@]}" "${@:flags+1}")
printf 'horovodrun.sh: running' >&2
printf ' %q' "${command[@]}" >&2
echo >&2

if [[ -z "${SENTIMENT_DIST_EXIT_FILE:-}" ]]; then
  SENTIMENT_DIST_EXIT_FILE=$(mktemp "${TMPDIR:-/tmp}/sentiment-dist-exit.XXXXXX")
  trap 'rm -f "$SENTIMENT_DIST_EXIT_FILE"' EXIT
fi
: > "$SENTIMENT_DIST_EXIT_FILE"
export SENTIMENT_DIST_EXIT_FILE
"${command[@]}" &
pid=$!
# A SIGTERM or SIGINT for this script is one for the job: horovodrun passes it to every worker.
trap 'kill -TERM "$pid" 2>/dev/null' TERM
trap 'kill -INT "$pid" 2>/dev/null' INT
status=0
while true; do
  wait "$pid" && status=0 || status=$?
  kill -0 "$pid" 2>/dev/null || break  # wait returns early when a trapped signal arrives
done
code=$(tr -dc '0-9' < "$SENTIMENT_DIST_EXIT_FILE")
if ((status != 0)) && [[ -n "$code" ]]; then
  ((code == 138)) && echo "horovodrun.sh: the job was preempted and saved where it stopped; rerun it with the same hydra.run.dir to continue." >&2
  exit "$code"
fi
exit "$status"
