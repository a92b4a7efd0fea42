#!/bin/bash
# A real single-node Slurm with accounting on this machine, for CI and for trying the Slurm launcher locally:
# munge -> MariaDB -> slurmdbd -> slurmctld -> slurmd, then wait until the node is idle.
# Idempotent: installs the Debian packages that are missing, (re)writes the configs, starts only the daemons that
# are not running. Needs root (Debian/Ubuntu). Stop with slurm/cluster-stop.sh; `--wipe` there forgets all jobs.
# Facts behind the choices: ../shared/notes/slurm-local-cluster.md (no cgroups: linuxproc + task/none; accounting
# because submitit reads job states from sacct; cred_expire=10 so requeued jobs restart at once).
set -euo pipefail
STATE=${WEBLY_SLURM_STATE:-/var/lib/webly-slurm}
CONF_DIR=/etc/slurm
DB_PASS=webly-local

log() { echo "[slurm] $*"; }

running() {  # running PIDFILE COMM: the pid file names a live process with that command name
  [[ -s $1 ]] || return 1
  local pid; pid=$(<"$1")
  [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$2" ]]
}

wait_for() {  # wait_for SECONDS WHAT CMD...: poll until CMD succeeds
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "timed out waiting for $what"; tail -n 20 "$STATE"/log/*.log 2>/dev/null; exit 1; }
    sleep 0.5
  done
}

[[ $(id -u) == 0 ]] || { log "needs root (installs packages, writes $CONF_DIR)"; exit 1; }

missing=()
for pkg in munge mariadb-server slurmdbd slurmctld slurmd slurm-client; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$STATE"/{ctld,spool,log,run} "$CONF_DIR" /run/munge /run/mysqld
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) * 8 / 10 / 1024 ))

cat > "$CONF_DIR/slurm.conf" <<EOF
# Written by webly's slurm/cluster-start.sh: a single-node cluster for tests.
ClusterName=webly
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=2048
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
MinJobAge=600
KillWait=5
InactiveLimit=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=10
EOF

cat > "$CONF_DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
EOF
chmod 600 "$CONF_DIR/slurmdbd.conf"

if ! running /run/munge/munged.pid munged; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
fi
wait_for 10 munge munge -n

if ! running /run/mysqld/webly-mariadb.pid mariadbd; then
  log "starting mariadbd"
  [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  nohup mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
    --pid-file=/run/mysqld/webly-mariadb.pid --skip-networking=0 --bind-address=127.0.0.1 \
    >"$STATE/log/mariadb.log" 2>&1 &
fi
wait_for 30 mariadb mariadb -e "SELECT 1"
mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

if ! running "$STATE/run/slurmdbd.pid" slurmdbd; then
  log "starting slurmdbd"
  slurmdbd
fi
wait_for 30 slurmdbd sacctmgr -n list cluster

if ! running "$STATE/run/slurmctld.pid" slurmctld; then
  log "starting slurmctld"
  slurmctld
fi
wait_for 30 slurmctld scontrol ping
sacctmgr -n list cluster format=cluster | grep -qw webly || sacctmgr -i add cluster webly >/dev/null

if ! running "$STATE/run/slurmd.pid" slurmd; then
  log "starting slurmd"
  slurmd -N localhost
fi
node_ready() { sinfo -h -N -o %T | grep -Eq '^(idle|mixed|allocated)'; }
wait_for 60 "the node to be idle" node_ready
log "ready: $(sinfo -h -o '%P %D %T' | tr '\n' ' ')"
