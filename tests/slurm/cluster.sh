#!/usr/bin/env bash
# slurm-cluster.sh — throw-away single-node SLURM (22.05, Debian 12) for CI tests.
#
#   slurm-cluster.sh start  <state_dir>   install (if missing), configure, start munged/slurmctld/slurmd,
#                                         wait until the node is idle; prints `export SLURM_CONF=...`
#   slurm-cluster.sh status <state_dir>   daemons + sinfo + squeue
#   slurm-cluster.sh stop   <state_dir>   cancel jobs, kill slurmd/slurmctld/slurmstepd/munged, verify none left
#                                         (idempotent; safe to call when nothing runs)
#   slurm-cluster.sh env    <state_dir>   print `export SLURM_CONF=...` (eval-able)
#
# Everything (slurm.conf, gres.conf, state, spool, logs, pid files, fake GPU device nodes) lives under
# <state_dir>. Must run as root on a machine without systemd (daemons are started by hand).
#
# Knobs (environment):
#   SLURM_HELPER_GPUS=4        number of fake GPUs (symlinks to /dev/null); 0 disables GRES
#   SLURM_HELPER_CPUS=$(nproc) CPUs advertised for the node. If larger than the real count,
#                              SlurmdParameters=config_overrides is set so slurmd accepts it
#                              (lets more 1-CPU jobs run side by side on a 2-core CI box).
#   SLURM_HELPER_TIMEOUT=30    seconds to wait for the node to become idle
#
# Notes:
# * SLURM_CONF=<state_dir>/slurm.conf is honoured by sbatch/squeue/sinfo/scontrol/srun and the daemons,
#   BUT snakemake-executor-plugin-slurm-jobstep strips every SLURM_* variable (SLURM_CONF included)
#   before running the inner `srun`, which would then look for /etc/slurm/slurm.conf. Therefore
#   /etc/slurm/slurm.conf is also created as a symlink to <state_dir>/slurm.conf (removed again by
#   `stop`, only if it is still our symlink; an existing regular file there is never touched — start fails).
set -euo pipefail

die() { echo "slurm-cluster: ERROR: $*" >&2; exit 1; }
log() { echo "slurm-cluster: $*" >&2; }

cmd=${1:-}
state_dir=${2:-}
[[ -n "$cmd" && -n "$state_dir" ]] || die "usage: $0 {start|stop|status|env} <state_dir>"
[[ $(id -u) -eq 0 ]] || die "must run as root"
mkdir -p "$state_dir"
state_dir=$(cd "$state_dir" && pwd -P)
# munged runs as user munge and must reach <state_dir>/munge (mktemp -d creates mode 700)
[[ $cmd == start ]] && chmod a+rx "$state_dir"

CONF="$state_dir/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf
MUNGE_DIR="$state_dir/munge"
MUNGE_PID=/run/munge/munged.pid          # default location: the socket dir /run/munge is what clients use
CTLD_PID="$state_dir/run/slurmctld.pid"
SLURMD_PID="$state_dir/run/slurmd.pid"
LOGDIR="$state_dir/log"
NGPUS=${SLURM_HELPER_GPUS:-4}
TIMEOUT=${SLURM_HELPER_TIMEOUT:-30}

# a process counts as alive unless gone or a zombie (exited daemons are reparented to PID 1,
# which may reap them late; `kill -0` succeeds on zombies)
proc_alive() { local s; s=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [[ -n "$s" && "$s" != Z ]]; }
pid_alive() { [[ -s "$1" ]] && proc_alive "$(cat "$1")"; }
# live pids with exactly this process name (zombies excluded)
live_pids() { local p; for p in $(pgrep -x "$1" || true); do proc_alive "$p" && echo "$p"; done; return 0; }

# ---------------------------------------------------------------------------------------------
install_if_missing() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    local pkgs=(slurmctld slurmd slurm-client munge)
    log "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"$state_dir/apt.log" 2>&1; then
        log "install failed without index update; running apt-get update"
        apt-get update -q >>"$state_dir/apt.log" 2>&1 || { cat "$state_dir/apt.log" >&2; die "apt-get update failed"; }
        apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$state_dir/apt.log" 2>&1 \
            || { cat "$state_dir/apt.log" >&2; die "apt-get install failed"; }
    fi
}

write_config() {
    local host cpus realcpus mem_mb extra=""
    host=$(hostname -s)
    realcpus=$(nproc)
    cpus=${SLURM_HELPER_CPUS:-$realcpus}
    (( cpus > realcpus )) && extra="SlurmdParameters=config_overrides"
    # RealMemory a bit under the real total (slurmd drains the node if RealMemory > actual).
    mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2/1024*0.9}' /proc/meminfo)

    mkdir -p "$state_dir"/{ctld,spool,run,log,dev}
    local gres_node="" gres_types=""
    : >"$state_dir/gres.conf"
    if (( NGPUS > 0 )); then
        gres_types="GresTypes=gpu"
        gres_node="Gres=gpu:fake:$NGPUS"
        for ((i = 0; i < NGPUS; i++)); do
            # GRES File= must exist and be a device node: a symlink to /dev/null works
            # (file-less GPUs get dropped, regular files are rejected).
            ln -sfn /dev/null "$state_dir/dev/fakegpu$i"
            echo "NodeName=$host Name=gpu Type=fake File=$state_dir/dev/fakegpu$i" >>"$state_dir/gres.conf"
        done
    fi

    cat >"$CONF" <<EOF
# generated by slurm-cluster.sh — single node test cluster
ClusterName=ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
$extra
$gres_types
# keep finished jobs visible to squeue (plugin uses squeue for status, no slurmdbd)
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
StateSaveLocation=$state_dir/ctld
SlurmdSpoolDir=$state_dir/spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb $gres_node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 644 "$CONF" "$state_dir/gres.conf"
}

link_etc_conf() {
    mkdir -p /etc/slurm
    if [[ -L "$ETC_CONF" ]]; then
        ln -sfn "$CONF" "$ETC_CONF"
    elif [[ -e "$ETC_CONF" ]]; then
        die "$ETC_CONF exists and is not our symlink; refusing to overwrite"
    else
        ln -s "$CONF" "$ETC_CONF"
    fi
}

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating munge key"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key
    chmod 700 /etc/munge
    chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 "$MUNGE_DIR"
    if pid_alive "$MUNGE_PID"; then
        log "munged already running (pid $(cat "$MUNGE_PID"))"
    else
        runuser -u munge -- munged --force \
            --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
            --pid-file="$MUNGE_PID" || fail_start "munged failed to start"
    fi
    local i
    for i in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
    cat "$MUNGE_DIR/munged.log" >&2 || true
    fail_start "munge does not work"
}

dump_logs() {
    local f
    for f in "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" "$MUNGE_DIR/munged.log"; do
        [[ -f "$f" ]] && { echo "===== $f (tail) =====" >&2; tail -n 60 "$f" >&2; }
    done
    return 0
}

# a failed start must not leave daemons behind: dump logs, tear down, fail
fail_start() {
    log "$1"
    sinfo -N -o '%N %T %E' >&2 2>/dev/null || true
    dump_logs
    do_stop >&2 || true
    die "start failed"
}

do_start() {
    install_if_missing
    export SLURM_CONF="$CONF"
    if pid_alive "$CTLD_PID" && pid_alive "$SLURMD_PID"; then
        log "already running"
    else
        # stale leftovers from an earlier run in the same dir
        do_stop_quiet
        write_config
        link_etc_conf
        start_munge
        # -c: clear saved state (no resurrection of old jobs)
        slurmctld -c -f "$CONF" || fail_start "slurmctld failed to start"
        slurmd -c -f "$CONF" || fail_start "slurmd failed to start"
    fi
    local deadline=$((SECONDS + TIMEOUT)) st=""
    while ((SECONDS < deadline)); do
        st=$(sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true)
        if [[ "$st" == idle ]]; then
            log "node $(hostname -s) idle after ${SECONDS}s (state dir $state_dir)"
            sinfo -N -o '%N %P %T %c %m %G' >&2
            echo "export SLURM_CONF=$CONF"
            return 0
        fi
        # a node that came up "down"/"drain" after an unclean earlier stop: resume it
        if [[ "$st" == down* || "$st" == drain* ]]; then
            scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        fi
        sleep 0.5
    done
    fail_start "node not idle after ${TIMEOUT}s (last state: '${st:-none}')"
}

# kill a daemon given by pid file; TERM, wait, KILL
kill_pidfile() {
    local f=$1 name=$2 pid i
    [[ -s "$f" ]] || return 0
    pid=$(cat "$f")
    if proc_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 100); do proc_alive "$pid" || break; sleep 0.1; done
        if proc_alive "$pid"; then log "$name ($pid) ignored TERM for 10s; KILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$f"
}

# kill every live process with exactly this name (slurmstepd, and daemons whose pid file is gone)
kill_by_exact_name() {
    local name=$1 i
    local -a pids
    mapfile -t pids < <(live_pids "$name")
    ((${#pids[@]})) || return 0
    log "killing leftover $name: ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for i in $(seq 30); do [[ -z "$(live_pids "$name")" ]] && return 0; sleep 0.1; done
    mapfile -t pids < <(live_pids "$name")
    if ((${#pids[@]})); then kill -KILL "${pids[@]}" 2>/dev/null || true; sleep 0.2; fi
}

do_stop_quiet() {
    export SLURM_CONF="$CONF"
    # cancel all jobs first so that slurmstepd and job processes are cleaned up by slurm itself
    if pid_alive "$CTLD_PID" && [[ -f "$CONF" ]]; then
        local -a jobs
        mapfile -t jobs < <(squeue -h -o %i 2>/dev/null || true)
        ((${#jobs[@]})) && { scancel --full --quiet "${jobs[@]}" >/dev/null 2>&1 || true; }
        local i
        for i in $(seq 40); do
            [[ -z "$(squeue -h -t R,CG,PD -o %i 2>/dev/null)" ]] && break
            sleep 0.25
        done
    fi
    kill_pidfile "$SLURMD_PID" slurmd
    kill_pidfile "$CTLD_PID" slurmctld
    kill_pidfile "$MUNGE_PID" munged
    # leftovers: step daemons (they outlive slurmd by design) and daemons without/with stale pid files
    kill_by_exact_name slurmstepd
    kill_by_exact_name slurmd
    kill_by_exact_name slurmctld
    kill_by_exact_name munged
}

do_stop() {
    do_stop_quiet
    [[ -L "$ETC_CONF" && "$(readlink "$ETC_CONF")" == "$CONF" ]] && rm -f "$ETC_CONF"
    local -a left
    # (pgrep matches at most 15 chars of the name, so one name per call; -x = exact name)
    mapfile -t left < <(for n in slurmctld slurmd slurmstepd munged slurmdbd; do live_pids "$n"; done)
    if ((${#left[@]})); then
        ps -o pid,stat,cmd -p "$(IFS=,; echo "${left[*]}")" >&2 || true
        die "processes left after stop"
    fi
    # exited daemons linger as zombies until PID 1 reaps them (~1 s here); wait so that a plain
    # `pgrep slurm` right after stop is clean. Zombies are not running, so no error if they stay.
    local i
    for i in $(seq 50); do
        [[ -z "$(for n in slurmctld slurmd slurmstepd munged; do pgrep -x "$n"; done)" ]] && break
        sleep 0.1
    done
    log "stopped; no slurm/munge processes left"
}

do_status() {
    export SLURM_CONF="$CONF"
    local ok=0 n f
    for n in munged:$MUNGE_PID slurmctld:$CTLD_PID slurmd:$SLURMD_PID; do
        f=${n#*:}
        if pid_alive "$f"; then echo "${n%%:*}: running (pid $(cat "$f"))"; else echo "${n%%:*}: not running"; ok=1; fi
    done
    if ((ok == 0)); then
        sinfo -N -o '%N %P %T %c %m %G' || ok=1
        squeue || ok=1
    fi
    return $ok
}

case "$cmd" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "unknown command '$cmd' (start|stop|status|env)" ;;
esac
