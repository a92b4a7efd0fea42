#!/bin/bash
# Stop the daemons slurm/cluster-start.sh started, each by the PID in its pid file (never by name), in the reverse
# order of starting. `--wipe` also forgets every job: Slurm's saved state and the accounting database together
# (wiping only one makes job ids restart while sacct still reports the old jobs).
set -uo pipefail
STATE=${WEBLY_SLURM_STATE:-/var/lib/webly-slurm}

stop() {  # stop PIDFILE COMM
  [[ -s $1 ]] || return 0
  local pid; pid=$(<"$1")
  [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$2" ]] || return 0
  kill "$pid"
  for _ in $(seq 50); do [[ -d /proc/$pid ]] || break; sleep 0.2; done
  [[ -d /proc/$pid ]] && kill -9 "$pid"
  echo "[slurm] stopped $2 ($pid)"
}

if [[ ${1:-} == --wipe ]] && command -v scancel >/dev/null; then
  scancel --user=root 2>/dev/null || true
fi
stop "$STATE/run/slurmd.pid" slurmd
stop "$STATE/run/slurmctld.pid" slurmctld
stop "$STATE/run/slurmdbd.pid" slurmdbd
if [[ ${1:-} == --wipe ]]; then
  mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db" 2>/dev/null || true
  rm -rf "$STATE/ctld" "$STATE/spool"
fi
stop /run/mysqld/webly-mariadb.pid mariadbd
stop /run/munge/munged.pid munged
exit 0
