# shellcheck shell=bash
# proc.sh: the pid-reuse guard of the local stack, sourced by deploy/stack.sh
# and tests/stack/test_stack.sh (bash).
#
# Every process of the stack is the leader of its own process group (it runs
# under setsid; PostgreSQL's pg_ctl does the same for the postmaster), so its
# pid is also the group's id, and its children (nginx's workers) are in that
# group. (PostgreSQL's backends each make a session of their own, and exit
# by themselves once the postmaster is gone.) A pid file holds one line,
# "PID STARTTIME", where STARTTIME is field 22 of /proc/PID/stat (clock ticks
# since boot): a later, unrelated process that is given the same pid has
# another start time, and is never signalled.
#
# Why the group id is safe to signal once the leader has gone: Linux does not
# hand out a pid number while any process still uses it as its group id, so
# while our leader's group has members, no other process can own that number.
# A group is therefore signalled only if its leader is our very process, or
# if no process at all has that pid (the leader died, its group may linger).

# proc_stat PID: sets PROC_STATE (one letter), PROC_PGID and PROC_START from
# /proc/PID/stat; fails if there is no such process.
proc_stat() {
    local line
    { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
    # The command name (field 2) may hold spaces and parentheses: skip past
    # its last ')'. What is left starts with field 3.
    # shellcheck disable=SC2086 # splitting the fields is the point
    set -- ${line##*) }
    PROC_STATE=$1 PROC_PGID=$3 PROC_START=${20}
}

# proc__read FILE: sets PROC_PID and PROC_REC_START from a pid file. (A
# stack started by an earlier stack.sh kept the start time apart, in
# NAME.start: such a stack can still be stopped.)
proc__read() {
    { read -r PROC_PID PROC_REC_START <"$1"; } 2>/dev/null || return 1
    [ -n "$PROC_REC_START" ] || { read -r PROC_REC_START <"${1%.pid}.start"; } 2>/dev/null
}

# proc_record FILE PID: write FILE for the process PID that was just started.
# Fails if it has exited, or if it does not lead its own group within a
# second (a child that has not reached its setsid yet is given that long).
proc_record() {
    local tries=0
    while proc_stat "$2"; do
        if [ "$PROC_PGID" = "$2" ]; then
            printf '%s %s\n' "$2" "$PROC_START" >"$1"
            return 0
        fi
        [ "$tries" -lt 100 ] || return 1
        tries=$((tries + 1))
        sleep 0.01
    done
    return 1
}

# proc_live FILE: print the recorded pid if that very process is alive (a
# zombie is dead here); fail otherwise.
proc_live() {
    proc__read "$1" && proc_stat "$PROC_PID" || return 1
    [ "$PROC_START" = "$PROC_REC_START" ] || return 1
    case $PROC_STATE in Z | X) return 1 ;; esac
    printf '%s\n' "$PROC_PID"
}

# proc_group_left FILE: is any process of the recorded group still there
# (other than a leader that is only a zombie)? False when the pid number now
# belongs to an unrelated process (see the top of this file).
proc_group_left() {
    proc__read "$1" || return 1
    if proc_stat "$PROC_PID"; then
        [ "$PROC_START" = "$PROC_REC_START" ] || return 1
        case $PROC_STATE in Z | X) ;; *) return 0 ;; esac
    fi
    # The leader is gone (or a zombie): members may be left behind.
    pgrep -g "$PROC_PID" | grep -qvx "$PROC_PID"
}

# proc_kill_group FILE SIGNAL: signal every process of the recorded group,
# under the guard of proc_group_left.
proc_kill_group() {
    proc_group_left "$1" || return 0
    kill -s "$2" -- "-$PROC_PID" 2>/dev/null || true
}
