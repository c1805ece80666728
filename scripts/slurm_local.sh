#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, from Debian's packages, for the tests of the SLURM launcher:
# installs slurmctld, slurmd and munge if they are missing, writes a minimal slurm.conf for this host (all its
# cores in one partition, `local`), and starts munged, slurmctld and slurmd. Needs root and apt. Idempotent: a
# cluster already up is left as it is. `scripts/slurm_local.sh stop` stops it.
set -euo pipefail
if [ "${1:-}" = stop ]; then
    pkill -x slurmd || true; pkill -x slurmctld || true; pkill -x munged || true
    exit 0
fi
if ! command -v slurmctld > /dev/null || ! command -v slurmd > /dev/null || ! command -v munged > /dev/null; then
    apt-get update -q > /dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge > /dev/null
fi
if scontrol ping 2> /dev/null | grep -q UP && sinfo -h -o %T 2> /dev/null | grep -qE "idle|mix|alloc"; then
    exit 0
fi
host=$(hostname -s)
cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
chown -R munge:munge /etc/munge /run/munge 2> /dev/null || true
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
pgrep -x munged > /dev/null || runuser -u munge -- /usr/sbin/munged
pgrep -x slurmctld > /dev/null || slurmctld
pgrep -x slurmd > /dev/null || slurmd
for _ in $(seq 60); do
    if sinfo -h -o %T 2> /dev/null | grep -qE "idle|mix|alloc"; then
        exit 0
    fi
    scontrol update NodeName="$host" State=RESUME 2> /dev/null || true
    sleep 1
done
echo "slurm_local.sh: the node did not come up; see /var/log/slurm/" >&2
exit 1
