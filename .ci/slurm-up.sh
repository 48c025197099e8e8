#!/usr/bin/env bash
# Bring up a one-node Slurm cluster on this machine (Debian/Ubuntu, run as root) so that CI can run
# `snakemake --profile slurm` against a real slurmctld/slurmd instead of a mock.
#
# Idempotent: packages, the munge key and slurm.conf are only created when missing or different, and daemons
# that already answer are left alone. Accounting is off, so `sacct` cannot answer; the profile therefore asks
# the executor to poll with `squeue`, which only works because MinJobAge keeps finished jobs visible for an hour.
#
# Environment:
#   SWEET_SLURM_CPUS     CPUs the node advertises (default: nproc)
#   SWEET_SLURM_TIMEOUT  seconds to wait for the node to become idle (default: 60)
#   SWEET_SLURM_FAKE_GPUS  advertise N "gpu" GRES backed by no real device (/dev/null), so that GPU requests are
#                        accepted, scheduled and counted on a GPU-less machine (default: 0 = a CPU-only node)
#   SWEET_SLURM_MAX_TIME   the partition's MaxTime in minutes, as GPU partitions cap it (default: INFINITE)
#   SWEET_SLURM_MAX_MEM_MB the partition's MaxMemPerNode in MB: a job asking for more is refused (default: none)
set -euo pipefail

log() { echo "[slurm-up] $*"; }
die() { echo "[slurm-up] ERROR: $*" >&2; diagnostics >&2; exit 1; }

SLURM_ETC=/etc/slurm
CONF="$SLURM_ETC/slurm.conf"
NODE="$(hostname -s)"
CPUS="${SWEET_SLURM_CPUS:-$(nproc)}"
TIMEOUT="${SWEET_SLURM_TIMEOUT:-60}"
FAKE_GPUS="${SWEET_SLURM_FAKE_GPUS:-0}"
MAX_TIME="${SWEET_SLURM_MAX_TIME:-INFINITE}"
MAX_MEM="${SWEET_SLURM_MAX_MEM_MB:-}"
# Leave ~1 GiB to the OS; Slurm refuses to start a node whose RealMemory exceeds what it finds.
MEM_MB="$(awk '/MemTotal/ {printf "%d", $2 / 1024 - 1024}' /proc/meminfo)"
[ "$MEM_MB" -ge 1024 ] || MEM_MB=1024

diagnostics() {
  echo "---- diagnostics ----"
  for d in munged slurmctld slurmd; do
    if pgrep -x "$d" >/dev/null; then echo "$d: running (pid $(pgrep -x "$d" | tr '\n' ' '))"; else echo "$d: NOT running"; fi
  done
  command -v sinfo >/dev/null && { sinfo -N -l 2>&1 || true; scontrol show node "$NODE" 2>&1 | head -20 || true; }
  for f in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log /var/log/munge/munged.log; do
    [ -f "$f" ] && { echo "---- tail $f"; tail -n 25 "$f"; }
  done
  echo "---------------------"
}

if [ "$(id -u)" -ne 0 ]; then
  echo "[slurm-up] ERROR: must run as root (it installs packages and starts daemons)" >&2
  exit 1
fi

# 1. Packages ------------------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
  || ! command -v sbatch >/dev/null; then
  log "installing slurm-wlm and munge (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The postinst scripts try to start services via invoke-rc.d; without systemd that only prints noise, and
  # we start the daemons ourselves below.
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
else
  log "slurm-wlm and munge already installed"
fi

# 2. Munge key -----------------------------------------------------------------------------------------------
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating munge key"
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile=/etc/munge/munge.key --force
  else
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key

# 3. slurm.conf ----------------------------------------------------------------------------------------------
mkdir -p "$SLURM_ETC" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
chown -R slurm:slurm /var/spool/slurmctld /var/log/slurm 2>/dev/null || true
gres_line="" node_gres=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  gres_line="GresTypes=gpu"
  node_gres="Gres=gpu:${FAKE_GPUS}"
  # slurmd counts gpu GRES by device files, one distinct file per GPU: character devices that behave like
  # /dev/null (major 1, minor 3) stand in for them. Jobs see CUDA_VISIBLE_DEVICES, but no device exists.
  for i in $(seq 0 $((FAKE_GPUS - 1))); do
    [ -e "/dev/sweet-fake-gpu$i" ] || mknod -m 666 "/dev/sweet-fake-gpu$i" c 1 3
    echo "NodeName=${NODE} Name=gpu File=/dev/sweet-fake-gpu$i"
  done >"$SLURM_ETC/gres.conf"
else
  rm -f "$SLURM_ETC/gres.conf"
fi
new_conf="$(mktemp)"
cat >"$new_conf" <<EOF
# Written by .ci/slurm-up.sh: a one-node CI cluster. Not a production configuration.
ClusterName=sweet-ci
SlurmctldHost=${NODE}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# No cgroups in CI containers: track processes by parent pid, no task confinement.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue for an hour: the status command without accounting.
MinJobAge=3600
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
# Jobs asking for more than the partition allows are refused at submission (as on most GPU clusters), not
# left pending forever.
EnforcePartLimits=ALL
Waittime=0
MpiDefault=none
${gres_line}
NodeName=${NODE} CPUs=${CPUS} RealMemory=${MEM_MB} ${node_gres} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=${MAX_TIME} ${MAX_MEM:+MaxMemPerNode=${MAX_MEM}} State=UP
EOF
conf_changed=0
if ! cmp -s "$new_conf" "$CONF"; then
  log "writing $CONF (node $NODE, $CPUS CPUs, ${MEM_MB} MB)"
  install -m 0644 "$new_conf" "$CONF"
  conf_changed=1
fi
rm -f "$new_conf"

# 4. Daemons -------------------------------------------------------------------------------------------------
if ! pgrep -x munged >/dev/null; then
  log "starting munged"
  # munged refuses to run as root unless forced; run it as its own user like the service unit does.
  if id munge >/dev/null 2>&1; then
    su -s /bin/sh munge -c "munged" || die "munged failed to start"
  else
    munged --force || die "munged failed to start"
  fi
fi
for _ in $(seq 1 20); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
munge -n </dev/null | unmunge >/dev/null 2>&1 || die "munge credentials do not round-trip"

if [ "$conf_changed" = 1 ]; then
  # A daemon started with an older configuration would keep it: restart both.
  for d in slurmd slurmctld; do
    if pid="$(pgrep -x "$d")"; then
      log "restarting $d for the new configuration"
      kill $pid
      for _ in $(seq 1 20); do pgrep -x "$d" >/dev/null || break; sleep 0.5; done
    fi
  done
fi
if ! pgrep -x slurmctld >/dev/null; then
  log "starting slurmctld"
  slurmctld || die "slurmctld failed to start"
fi
if ! pgrep -x slurmd >/dev/null; then
  log "starting slurmd"
  slurmd || die "slurmd failed to start"
fi

# 5. Wait for the node ---------------------------------------------------------------------------------------
log "waiting up to ${TIMEOUT}s for node $NODE to become idle"
deadline=$((SECONDS + TIMEOUT))
while :; do
  state="$(sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n1 || true)"
  case "$state" in
    idle | mixed | allocated | completing) break ;;
    down* | drain* | fail* | inval*)
      # A node remembered as down from an earlier run (e.g. after a reboot) can be resumed.
      scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  [ "$SECONDS" -lt "$deadline" ] || die "node $NODE not idle after ${TIMEOUT}s (state: '${state:-unknown}')"
  sleep 1
done
log "cluster up: node $NODE is $state"
sinfo
