#!/usr/bin/env bash
# A single-node SLURM on this machine (127.0.0.1), for the `slurm` tests and for trying hydra/launcher=slurm_cpu:
# installs Debian's slurm-wlm, slurmdbd, munge and mariadb-server when missing, writes /etc/slurm/slurm.conf and
# slurmdbd.conf (one node: this host, its CPUs and memory as `slurmd -C` reads them; partition `morphogen`;
# job accounting in a private MariaDB on 127.0.0.1:3307, which `sacct` and submitit read), starts munged,
# MariaDB, slurmdbd, slurmctld and slurmd, and waits until the node is idle. Run as root; safe to run again
# (what runs is left running). Stop it with scripts/slurm/stop.sh.
# State under /var/lib/morphogen-slurm, logs under /var/log/morphogen-slurm, pid files in /run/morphogen-slurm.
#   MORPHOGEN_SLURM_TIMEOUT_S: how long to wait for each daemon and the node (default 120).
set -euo pipefail

STATE=/var/lib/morphogen-slurm
LOGS=/var/log/morphogen-slurm
RUN=/run/morphogen-slurm
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARK="# written by morphogen_exp scripts/slurm/start.sh"
PARTITION=morphogen
DB_PORT=3307
TIMEOUT_S=${MORPHOGEN_SLURM_TIMEOUT_S:-120}

die() { echo "slurm start: $*" >&2; exit 1; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for WHAT COMMAND...: until COMMAND succeeds, or fail in one line
  local what=$1 deadline=$((SECONDS + TIMEOUT_S))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$what not ready after ${TIMEOUT_S}s (logs: $LOGS)"
    sleep 0.5
  done
}

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts system daemons)"
for f in "$CONF" "$DBD_CONF"; do
  if [[ -e $f ]] && ! head -1 "$f" | grep -qF "$MARK"; then
    die "$f exists and was not written by this script: leaving it alone (move it away to use this single-node SLURM)"
  fi
done
mkdir -p "$STATE/ctld" "$STATE/d" "$LOGS" "$RUN" /etc/slurm

# --------------------------------------------------------------------------- packages
if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v mariadbd >/dev/null || ! command -v sacct >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -qq update >"$LOGS/apt.log" 2>&1 || die "apt-get update failed (see $LOGS/apt.log)"
  apt-get -qq install -y --no-install-recommends slurm-wlm slurmdbd munge mariadb-server >>"$LOGS/apt.log" 2>&1 \
    || die "apt-get install slurm-wlm slurmdbd munge mariadb-server failed (see $LOGS/apt.log)"
fi

# --------------------------------------------------------------------------- munge
if [[ ! -s /etc/munge/munge.key ]]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
mkdir -p /run/munge && chown munge:munge /run/munge
if ! alive /run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
  touch "$RUN/munged.ours"  # stop.sh stops munged only when this script started it
fi

# --------------------------------------------------------------------------- the accounting database
DB="$STATE/mysql"
if [[ ! -d $DB/mysql ]]; then
  rm -rf "$DB"  # a half-initialised one from an interrupted start
  mkdir -p "$DB" && chown mysql:mysql "$DB"
  mariadb-install-db --user=mysql --datadir="$DB" --skip-test-db --auth-root-authentication-method=socket \
    >"$LOGS/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $LOGS/mariadb-install.log)"
fi
mkdir -p "$RUN/db" "$LOGS/db" && chown mysql:mysql "$RUN/db" "$LOGS/db" "$DB"
if ! alive "$RUN/db/mariadb.pid"; then
  # its own server: loopback only, its own port, socket and files (a system MariaDB is not touched)
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB" --bind-address=127.0.0.1 --port=$DB_PORT \
    --socket="$RUN/db/mariadb.sock" --pid-file="$RUN/db/mariadb.pid" --log-error="$LOGS/db/mariadb.log" \
    --innodb-buffer-pool-size=64M --skip-name-resolve >/dev/null 2>&1 &
fi
wait_for "MariaDB" mariadb-admin --no-defaults --socket="$RUN/db/mariadb.sock" -u root ping
if [[ ! -s $STATE/db.pass ]]; then
  (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$STATE/db.pass")
fi
PASS=$(cat "$STATE/db.pass")
mariadb --no-defaults --socket="$RUN/db/mariadb.sock" -u root -e "
  CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$PASS';
  ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$PASS';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || die "could not create the accounting database's user"

# --------------------------------------------------------------------------- configuration
NODE=$(hostname -s)
# This host's CPUs and memory as slurmd sees them: a node that claims more than it has is drained.
HW=$(slurmd -C | head -1 | sed -e "s/^NodeName=[^ ]*//")
[[ $HW == *CPUs=* && $HW == *RealMemory=* ]] || die "slurmd -C did not describe this host: $HW"
CPUS=$(sed -E 's/.* CPUs=([0-9]+).*/\1/' <<<"$HW")
MEM_MB=$(sed -E 's/.* RealMemory=([0-9]+).*/\1/' <<<"$HW")

slurm_conf=$(cat <<EOF
$MARK (single node, 127.0.0.1; stop: scripts/slurm/stop.sh)
ClusterName=morphogen
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job that asks for no memory gets its CPUs' share, not the whole node
DefMemPerCPU=$((MEM_MB / CPUS))
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1$HW State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
dbd_conf=$(cat <<EOF
$MARK (job accounting for the single-node SLURM)
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=$NODE
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$PASS
StorageLoc=slurm_acct_db
PidFile=$RUN/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
EOF
)

changed=0
write() {  # write FILE MODE CONTENT: replaced only when it differs
  if [[ ! -e $1 ]] || [[ $(cat "$1") != "$3" ]]; then
    (umask 077 && printf '%s\n' "$3" >"$1.tmp") && chmod "$2" "$1.tmp" && mv "$1.tmp" "$1"
    changed=1
  fi
}
write "$CONF" 644 "$slurm_conf"
write "$DBD_CONF" 600 "$dbd_conf"

# --------------------------------------------------------------------------- the SLURM daemons
if [[ $changed -eq 1 ]]; then  # a new configuration: daemons started on the old one start again
  for d in slurmd slurmctld slurmdbd; do
    if alive "$RUN/$d.pid"; then kill "$(cat "$RUN/$d.pid")"; fi
  done
  for d in slurmd slurmctld slurmdbd; do
    for _ in $(seq 100); do alive "$RUN/$d.pid" || break; sleep 0.2; done
  done
fi
alive "$RUN/slurmdbd.pid" || /usr/sbin/slurmdbd || die "slurmdbd did not start (see $LOGS/slurmdbd.log)"
wait_for "slurmdbd" sacctmgr -n list cluster
# the cluster in the accounting database (slurmctld records jobs only for a known cluster)
if [[ -z $(sacctmgr -n -P list cluster morphogen format=Cluster 2>/dev/null) ]]; then
  sacctmgr -i add cluster morphogen >/dev/null || die "sacctmgr could not add the cluster"
fi
alive "$RUN/slurmctld.pid" || /usr/sbin/slurmctld || die "slurmctld did not start (see $LOGS/slurmctld.log)"
alive "$RUN/slurmd.pid" || /usr/sbin/slurmd -N "$NODE" || die "slurmd did not start (see $LOGS/slurmd.log)"

# --------------------------------------------------------------------------- wait for the node
deadline=$((SECONDS + TIMEOUT_S))
state=""
while ((SECONDS < deadline)); do
  state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -1 || true)
  case $state in
    idle|mixed|allocated) exit 0 ;;
    down*|drain*|drained*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
die "node $NODE not idle after ${TIMEOUT_S}s (state: ${state:-no answer}); see $LOGS/slurmctld.log and $LOGS/slurmd.log"
