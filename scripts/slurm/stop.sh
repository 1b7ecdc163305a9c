#!/usr/bin/env bash
# Stop the single-node SLURM of scripts/slurm/start.sh: its jobs are cancelled, then slurmd, slurmctld,
# slurmdbd, its MariaDB and (when start.sh started it) munged end, by their pid files. Safe to run again, and
# when nothing runs. The configuration, the accounting database and the job history stay for the next start.
set -euo pipefail

RUN=/run/morphogen-slurm
CONF=/etc/slurm/slurm.conf
MARK="# written by morphogen_exp scripts/slurm/start.sh"

[[ $(id -u) -eq 0 ]] || { echo "slurm stop: run as root" >&2; exit 1; }
if [[ -e $CONF ]] && ! head -1 "$CONF" | grep -qF "$MARK"; then
  echo "slurm stop: $CONF was not written by scripts/slurm/start.sh: not this script's SLURM, left alone" >&2
  exit 1
fi

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {  # stop the daemon of a pid file: SIGTERM, then SIGKILL after 20 s
  local pidfile=$1
  alive "$pidfile" || return 0
  local pid
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

if alive "$RUN/slurmctld.pid"; then  # no job outlives its scheduler
  scancel --full --quiet --partition=morphogen 2>/dev/null || true
  for _ in $(seq 100); do [[ -z $(squeue -h -p morphogen 2>/dev/null) ]] && break; sleep 0.2; done
fi
stop "$RUN/slurmd.pid"
stop "$RUN/slurmctld.pid"
stop "$RUN/slurmdbd.pid"
stop "$RUN/db/mariadb.pid"
if [[ -e $RUN/munged.ours ]]; then  # a munged this script did not start is left running
  stop /run/munge/munged.pid
  rm -f "$RUN/munged.ours"
fi
