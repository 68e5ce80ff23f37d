#!/usr/bin/env bash
# Create, start, stop and inspect a local PostgreSQL *streaming replica* of
# the local primary, for sqlperf's read/write-routing tests.
#
#   scripts/pg-replica.sh [up]     create (pg_basebackup -R) or start the replica,
#                                  then prove replication end to end (default)
#   scripts/pg-replica.sh status   report; exit 0 only if it is streaming
#   scripts/pg-replica.sh stop     stop the replica (keeps data dir and slot)
#   scripts/pg-replica.sh destroy  stop it, delete its data dir, drop its slot
#
# `up` is idempotent: a replica that is already running, in recovery and
# streaming is left alone; a stopped one is started; a broken data dir, or one
# cloned from a different primary (system identifier mismatch), or one that
# was promoted, is removed and rebuilt.
#
# Meant for a Debian machine (postgresql.conf/pg_hba.conf live in /etc), run
# as root (PostgreSQL commands run as the postgres OS user via runuser) or as
# the postgres user itself.  Environment overrides:
#   PGPRIMARY_HOST (127.0.0.1)   PGPRIMARY_PORT (5432)   PGREPLICA_PORT (5433)
#   PGREPLICA_DATA (/var/lib/postgresql/15/sqlperf-replica)
#   PGREPLICA_SLOT (sqlperf_replica)
#   PGREPLICA_LOG  (/var/log/postgresql/postgresql-15-sqlperf-replica.log)
#   PGREPLICA_CHECK_DB (postgres)  database that holds the scratch table
#   PGREPLICA_TIMEOUT (30)         seconds to wait for streaming / a row
#   PG_BINDIR (/usr/lib/postgresql/15/bin)   PG_SUPERUSER (postgres)
set -euo pipefail

PG_MAJOR=15
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/$PG_MAJOR/bin}
PG_OS_USER=postgres
PG_SUPERUSER=${PG_SUPERUSER:-postgres}
PGPRIMARY_HOST=${PGPRIMARY_HOST:-127.0.0.1}
PGPRIMARY_PORT=${PGPRIMARY_PORT:-5432}
PGREPLICA_PORT=${PGREPLICA_PORT:-5433}
PGREPLICA_HOST=127.0.0.1
PGREPLICA_DATA=${PGREPLICA_DATA:-/var/lib/postgresql/$PG_MAJOR/sqlperf-replica}
PGREPLICA_SLOT=${PGREPLICA_SLOT:-sqlperf_replica}
PGREPLICA_LOG=${PGREPLICA_LOG:-/var/log/postgresql/postgresql-$PG_MAJOR-sqlperf-replica.log}
PGREPLICA_CHECK_DB=${PGREPLICA_CHECK_DB:-postgres}
PGREPLICA_TIMEOUT=${PGREPLICA_TIMEOUT:-30}
SOCKET_DIR=/var/run/postgresql
SCRATCH_TABLE=sqlperf_replica_probe
# In the (setgid, not sticky) socket dir, so root and postgres can share it.
LOCK_FILE=${PGREPLICA_LOCK:-$SOCKET_DIR/sqlperf-pg-replica.lock}

export PGCONNECT_TIMEOUT=5
# Connection settings from the caller's environment must not leak into ours.
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGSERVICE PGOPTIONS PGSSLMODE PGTARGETSESSIONATTRS

log() { printf 'pg-replica: %s\n' "$*"; }
warn() { printf 'pg-replica: WARNING: %s\n' "$*" >&2; }
die() {
    printf 'pg-replica: ERROR: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- helpers

# Run a command as the postgres OS user.
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u "$PG_OS_USER" -- "$@"
    else
        "$@"
    fi
}

pgbin() { printf '%s/%s' "$PG_BINDIR" "$1"; }

# psql_at HOST PORT DB SQL  -> unaligned, tuples only; fails on any error.
psql_at() {
    "$(pgbin psql)" -X -q -A -t -v ON_ERROR_STOP=1 \
        -h "$1" -p "$2" -U "$PG_SUPERUSER" -d "$3" -c "$4"
}
primary_sql() { psql_at "$PGPRIMARY_HOST" "$PGPRIMARY_PORT" "${2:-postgres}" "$1"; }
replica_sql() { psql_at "$PGREPLICA_HOST" "$PGREPLICA_PORT" "${2:-postgres}" "$1"; }

# Quote a string as an SQL literal.
sql_lit() { printf "'%s'" "${1//\'/\'\'}"; }

replica_answers() {
    "$(pgbin pg_isready)" -q -h "$PGREPLICA_HOST" -p "$PGREPLICA_PORT" -t 3 >/dev/null 2>&1
}

# 0 if our postmaster (the one for $PGREPLICA_DATA) is running.
replica_running() {
    [[ -f $PGREPLICA_DATA/postmaster.pid ]] || return 1
    as_pg "$(pgbin pg_ctl)" -D "$PGREPLICA_DATA" status >/dev/null 2>&1 && return 0
    # pg_ctl refuses a dir without PG_VERSION; fall back to the pid file.
    local pid
    pid=$(head -n1 "$PGREPLICA_DATA/postmaster.pid" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q postgres
}

# "t" when the replica is in recovery and its WAL receiver is streaming.
replica_streaming() {
    local out
    out=$(replica_sql "SELECT pg_is_in_recovery() AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')" 2>/dev/null) || return 1
    [[ $out == t ]]
}

# Wait (bounded) until the replica answers, is in recovery and streams.
wait_streaming() {
    local deadline=$((SECONDS + PGREPLICA_TIMEOUT)) in_recovery=""
    while ((SECONDS < deadline)); do
        if replica_answers; then
            in_recovery=$(replica_sql "SELECT pg_is_in_recovery()" 2>/dev/null || true)
            if [[ $in_recovery == f ]]; then
                warn "the server on port $PGREPLICA_PORT is NOT in recovery (was it promoted?)"
                return 1
            fi
            replica_streaming && return 0
        fi
        sleep 0.5
    done
    return 1
}

system_id_of_datadir() {
    LC_ALL=C as_pg "$(pgbin pg_controldata)" -D "$PGREPLICA_DATA" 2>/dev/null |
        sed -n 's/^Database system identifier:[[:space:]]*//p'
}

cluster_state_of_datadir() {
    LC_ALL=C as_pg "$(pgbin pg_controldata)" -D "$PGREPLICA_DATA" 2>/dev/null |
        sed -n 's/^Database cluster state:[[:space:]]*//p'
}

# Print why the replica data dir cannot be used (empty output: it is fine).
# Prints "absent" when there is nothing there yet.
datadir_problem() {
    local d=$PGREPLICA_DATA ver sysid state owner
    if [[ ! -d $d ]] || [[ -z $(ls -A "$d" 2>/dev/null) ]]; then
        echo absent
        return
    fi
    owner=$(stat -c %U "$d")
    [[ $owner == "$PG_OS_USER" ]] || {
        echo "owned by $owner, not $PG_OS_USER"
        return
    }
    [[ -f $d/PG_VERSION ]] || {
        echo "PG_VERSION is missing"
        return
    }
    ver=$(tr -d '[:space:]' <"$d/PG_VERSION")
    [[ $ver == "$PG_MAJOR" ]] || {
        echo "PG_VERSION is '$ver', expected $PG_MAJOR"
        return
    }
    [[ -f $d/global/pg_control ]] || {
        echo "global/pg_control is missing"
        return
    }
    sysid=$(system_id_of_datadir)
    [[ -n $sysid ]] || {
        echo "pg_controldata cannot read it"
        return
    }
    [[ $sysid == "$PRIMARY_SYSID" ]] || {
        echo "it belongs to a different primary (system identifier $sysid, primary has $PRIMARY_SYSID)"
        return
    }
    [[ -f $d/standby.signal ]] || {
        echo "standby.signal is missing (promoted, or not a standby)"
        return
    }
    state=$(cluster_state_of_datadir)
    case $state in
    "in archive recovery" | "shut down in recovery" | "in crash recovery" | "starting up") ;;
    *)
        echo "cluster state is '$state', not a standby's"
        return
        ;;
    esac
    grep -Eq "^[[:space:]]*primary_conninfo[[:space:]]*=" "$d/postgresql.auto.conf" 2>/dev/null || {
        echo "postgresql.auto.conf has no primary_conninfo"
        return
    }
    grep -Eq "^[[:space:]]*primary_slot_name[[:space:]]*=[[:space:]]*'$PGREPLICA_SLOT'" "$d/postgresql.auto.conf" 2>/dev/null || {
        echo "postgresql.auto.conf does not use replication slot $PGREPLICA_SLOT"
        return
    }
    grep -Eq "port=(')?$PGPRIMARY_PORT\b" "$d/postgresql.auto.conf" || {
        echo "primary_conninfo does not point at port $PGPRIMARY_PORT"
        return
    }
}

# Refuse to delete anything that is not obviously a replica data dir of ours.
assert_safe_to_remove() {
    local d real
    d=$PGREPLICA_DATA
    [[ $d == /* ]] || die "PGREPLICA_DATA must be an absolute path (got '$d')"
    real=$(realpath -m -- "$d")
    [[ $real != / && $(dirname "$real") != / ]] || die "refusing to remove '$real'"
    [[ $real != "$PRIMARY_DATADIR" && $real != "$PRIMARY_DATADIR"/* && $PRIMARY_DATADIR != "$real"/* ]] ||
        die "PGREPLICA_DATA ($real) overlaps the primary's data directory ($PRIMARY_DATADIR)"
}

stop_replica() { # $1: quiet|loud
    if ! replica_running; then
        [[ ${1:-loud} == quiet ]] || log "replica is not running"
        return 0
    fi
    log "stopping replica (data dir $PGREPLICA_DATA)"
    if as_pg "$(pgbin pg_ctl)" -D "$PGREPLICA_DATA" -m fast -w -t 60 stop >/dev/null 2>&1; then
        return 0
    fi
    # pg_ctl cannot stop a postmaster whose data dir lost PG_VERSION etc.:
    # signal the postmaster whose pid it wrote, and wait for it to go.
    local pid i
    pid=$(head -n1 "$PGREPLICA_DATA/postmaster.pid" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        warn "pg_ctl stop failed; sending SIGINT (fast shutdown) to postmaster $pid"
        kill -INT "$pid" 2>/dev/null || true
        for ((i = 0; i < 60; i++)); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.5
        done
        warn "postmaster $pid still up; sending SIGQUIT (immediate shutdown)"
        kill -QUIT "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.5
        done
        die "could not stop the replica postmaster (pid $pid)"
    fi
}

# ---------------------------------------------------------------- primary

PRIMARY_SYSID=""
PRIMARY_DATADIR=""

check_primary() {
    local rc=0
    "$(pgbin pg_isready)" -q -h "$PGPRIMARY_HOST" -p "$PGPRIMARY_PORT" -t 5 >/dev/null 2>&1 || rc=$?
    if ((rc != 0)); then
        die "the primary PostgreSQL server at $PGPRIMARY_HOST:$PGPRIMARY_PORT is not accepting connections (pg_isready exit $rc); start it first, e.g. pg_ctlcluster --skip-systemctl-redirect $PG_MAJOR main start"
    fi
    local row
    row=$(primary_sql "SELECT pg_is_in_recovery(), current_setting('wal_level'), current_setting('max_wal_senders'), (SELECT system_identifier FROM pg_control_system()), current_setting('data_directory'), current_setting('server_version_num')::int / 10000") ||
        die "cannot query the primary at $PGPRIMARY_HOST:$PGPRIMARY_PORT as $PG_SUPERUSER"
    local in_rec wal_level senders major
    IFS='|' read -r in_rec wal_level senders PRIMARY_SYSID PRIMARY_DATADIR major <<<"$row"
    [[ $in_rec == f ]] || die "the server on port $PGPRIMARY_PORT is itself in recovery; it is not a primary"
    [[ $wal_level == replica || $wal_level == logical ]] ||
        die "primary has wal_level=$wal_level; streaming replication needs wal_level=replica (restart required)"
    ((senders > 0)) || die "primary has max_wal_senders=0; streaming replication needs at least 1"
    [[ $major == "$PG_MAJOR" ]] || die "primary is PostgreSQL $major; this script builds a $PG_MAJOR replica (PG_BINDIR=$PG_BINDIR)"
    log "primary $PGPRIMARY_HOST:$PGPRIMARY_PORT is up (system identifier $PRIMARY_SYSID)"
}

# Make sure the primary accepts replication connections from the replica:
# 'all' in pg_hba.conf's database column does not match them.
ensure_primary_hba() {
    local hba changed=0
    hba=$(primary_sql "SHOW hba_file") || die "cannot read hba_file from the primary"
    [[ -f $hba ]] || die "primary's hba_file $hba does not exist here (is the primary on another machine?)"
    if ! grep -Eq '^[[:space:]]*local[[:space:]]+replication[[:space:]]+all[[:space:]]+trust([[:space:]]|$)' "$hba"; then
        [[ -w $hba ]] || die "need to add a replication line to $hba but cannot write it (run as root)"
        log "adding 'local replication all trust' to $hba"
        printf '%s\n' '# added by sqlperf scripts/pg-replica.sh: streaming replica on this machine' \
            'local   replication     all                                     trust' >>"$hba"
        changed=1
    fi
    if ! grep -Eq '^[[:space:]]*host[[:space:]]+replication[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust([[:space:]]|$)' "$hba"; then
        [[ -w $hba ]] || die "need to add a replication line to $hba but cannot write it (run as root)"
        log "adding 'host replication all 127.0.0.1/32 trust' to $hba"
        printf '%s\n' 'host    replication     all             127.0.0.1/32            trust' >>"$hba"
        changed=1
    fi
    if ((changed)); then
        local errors
        errors=$(primary_sql "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL")
        [[ $errors == 0 ]] || die "$hba now has $errors invalid line(s) (see pg_hba_file_rules); not reloading"
        primary_sql "SELECT pg_reload_conf()" >/dev/null
        log "reloaded the primary's configuration"
        sleep 0.5
    fi
    # Prove it: open a physical replication connection over TCP.
    local ok="" i
    for ((i = 0; i < 10; i++)); do
        if "$(pgbin psql)" -X -q -A -t \
            "host=$PGPRIMARY_HOST port=$PGPRIMARY_PORT user=$PG_SUPERUSER replication=true" \
            -c "IDENTIFY_SYSTEM" >/dev/null 2>&1; then
            ok=1
            break
        fi
        sleep 0.5
    done
    [[ -n $ok ]] || die "the primary refuses replication connections from $PGPRIMARY_HOST; check $hba"
}

# ---------------------------------------------------------------- build

slot_state() { # prints "" (no slot) or "t"/"f" (active)
    primary_sql "SELECT active FROM pg_replication_slots WHERE slot_name = $(sql_lit "$PGREPLICA_SLOT")"
}

drop_stale_slot() {
    local st i pid
    st=$(slot_state)
    [[ -n $st ]] || return 0
    # Our own walsender may need a moment to exit after the replica stopped.
    for ((i = 0; i < 30; i++)); do
        [[ $st == t ]] || break
        sleep 0.5
        st=$(slot_state)
    done
    if [[ $st == t ]]; then
        pid=$(primary_sql "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $(sql_lit "$PGREPLICA_SLOT")")
        die "replication slot $PGREPLICA_SLOT is in use by another standby (walsender pid $pid); stop it or set PGREPLICA_SLOT"
    fi
    [[ -z $st ]] && return 0
    log "dropping stale inactive replication slot $PGREPLICA_SLOT on the primary"
    primary_sql "SELECT pg_drop_replication_slot($(sql_lit "$PGREPLICA_SLOT"))" >/dev/null
}

write_replica_config() {
    local d=$PGREPLICA_DATA settings
    # Hot standby requires these to be >= the primary's values; copy them.
    settings=$(primary_sql "SELECT string_agg(name || ' = ' || quote_literal(setting), E'\n' ORDER BY name) FROM pg_settings WHERE name IN ('max_connections', 'max_worker_processes', 'max_wal_senders', 'max_prepared_transactions', 'max_locks_per_transaction', 'max_replication_slots', 'datestyle', 'timezone', 'lc_messages', 'lc_monetary', 'lc_numeric', 'lc_time', 'default_text_search_config', 'dynamic_shared_memory_type')")
    local shared_buffers
    shared_buffers=$(primary_sql "SHOW shared_buffers")
    {
        echo "# Written by sqlperf scripts/pg-replica.sh -- local streaming replica of"
        echo "# $PGPRIMARY_HOST:$PGPRIMARY_PORT.  Rewritten on every start; primary_conninfo and"
        echo "# primary_slot_name are in postgresql.auto.conf (pg_basebackup -R)."
        echo "port = $PGREPLICA_PORT"
        echo "listen_addresses = '$PGREPLICA_HOST'"
        echo "unix_socket_directories = '$SOCKET_DIR'"
        echo "cluster_name = '$PG_MAJOR/sqlperf-replica'"
        echo "hba_file = '$d/pg_hba.conf'"
        echo "ident_file = '$d/pg_ident.conf'"
        echo "shared_buffers = '$shared_buffers'"
        echo "hot_standby = on"
        echo "hot_standby_feedback = on"
        echo "wal_level = replica"
        echo "wal_receiver_status_interval = 1s"
        echo "wal_retrieve_retry_interval = 1s"
        echo "max_standby_streaming_delay = 30s"
        echo "logging_collector = off"
        echo "log_line_prefix = '%m [%p] %q%u@%d '"
        echo "log_timezone = 'Etc/UTC'"
        echo "$settings"
    } >"$d/postgresql.conf"
    {
        echo "# Written by sqlperf scripts/pg-replica.sh (local test replica: trust)"
        echo "local   all             all                                     trust"
        echo "local   replication     all                                     trust"
        echo "host    all             all             127.0.0.1/32            trust"
        echo "host    replication     all             127.0.0.1/32            trust"
    } >"$d/pg_hba.conf"
    : >"$d/pg_ident.conf"
    chown "$PG_OS_USER:$PG_OS_USER" "$d/postgresql.conf" "$d/pg_hba.conf" "$d/pg_ident.conf" 2>/dev/null || true
    chmod 600 "$d/postgresql.conf" "$d/pg_hba.conf" "$d/pg_ident.conf"
}

rebuild_replica() {
    assert_safe_to_remove
    stop_replica quiet
    if [[ -e $PGREPLICA_DATA ]]; then
        log "removing $PGREPLICA_DATA"
        rm -rf -- "$PGREPLICA_DATA"
    fi
    drop_stale_slot
    local parent
    parent=$(dirname -- "$PGREPLICA_DATA")
    [[ -d $parent ]] || mkdir -p -- "$parent"
    if [[ $(id -u) -eq 0 ]]; then
        install -d -o "$PG_OS_USER" -g "$PG_OS_USER" -m 700 -- "$PGREPLICA_DATA"
    else
        install -d -m 700 -- "$PGREPLICA_DATA"
    fi
    log "pg_basebackup -R from $PGPRIMARY_HOST:$PGPRIMARY_PORT into $PGREPLICA_DATA (slot $PGREPLICA_SLOT)"
    local started=$SECONDS
    if ! as_pg "$(pgbin pg_basebackup)" \
        -d "host=$PGPRIMARY_HOST port=$PGPRIMARY_PORT user=$PG_SUPERUSER application_name=sqlperf_replica" \
        -D "$PGREPLICA_DATA" --write-recovery-conf --create-slot --slot="$PGREPLICA_SLOT" \
        --wal-method=stream --checkpoint=fast --no-password; then
        rm -rf -- "$PGREPLICA_DATA"
        [[ $(slot_state 2>/dev/null || true) == f ]] &&
            primary_sql "SELECT pg_drop_replication_slot($(sql_lit "$PGREPLICA_SLOT"))" >/dev/null 2>&1
        die "pg_basebackup failed"
    fi
    log "base backup done in $((SECONDS - started))s"
    write_replica_config
}

start_replica() {
    [[ -d $SOCKET_DIR ]] || install -d -o "$PG_OS_USER" -g "$PG_OS_USER" -m 2775 "$SOCKET_DIR"
    if [[ ! -e $PGREPLICA_LOG ]]; then
        mkdir -p -- "$(dirname -- "$PGREPLICA_LOG")"
        : >"$PGREPLICA_LOG"
        if [[ $(id -u) -eq 0 ]]; then chown "$PG_OS_USER" "$PGREPLICA_LOG"; fi
        chmod 640 "$PGREPLICA_LOG"
    fi
    if replica_answers; then
        die "something already answers on $PGREPLICA_HOST:$PGREPLICA_PORT; cannot start the replica there"
    fi
    log "starting replica on $PGREPLICA_HOST:$PGREPLICA_PORT (log: $PGREPLICA_LOG)"
    # 9>&-: the postmaster must not inherit (and so hold forever) our lock fd.
    if ! as_pg "$(pgbin pg_ctl)" -D "$PGREPLICA_DATA" -l "$PGREPLICA_LOG" -w -t 60 start >/dev/null 9>&-; then
        warn "pg_ctl start failed; last lines of $PGREPLICA_LOG:"
        tail -n 20 "$PGREPLICA_LOG" >&2 || true
        return 1
    fi
}

# Write a row on the primary; wait until the replica shows it.
verify_replication() {
    local token db=$PGREPLICA_CHECK_DB deadline started_ms now_ms
    token="$(date +%s%N)-$$"
    # shellcheck disable=SC2064  # expand now: table and db are fixed
    trap "primary_sql 'DROP TABLE IF EXISTS $SCRATCH_TABLE' '$db' >/dev/null 2>&1 || true" EXIT
    primary_sql "CREATE TABLE IF NOT EXISTS $SCRATCH_TABLE (token text PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now())" "$db" >/dev/null
    primary_sql "INSERT INTO $SCRATCH_TABLE (token) VALUES ($(sql_lit "$token"))" "$db" >/dev/null
    started_ms=$(date +%s%3N)
    deadline=$((SECONDS + PGREPLICA_TIMEOUT))
    local seen=""
    while ((SECONDS < deadline)); do
        seen=$(replica_sql "SELECT count(*) FROM $SCRATCH_TABLE WHERE token = $(sql_lit "$token")" "$db" 2>/dev/null || true)
        [[ $seen == 1 ]] && break
        sleep 0.1
    done
    now_ms=$(date +%s%3N)
    primary_sql "DROP TABLE IF EXISTS $SCRATCH_TABLE" "$db" >/dev/null
    trap - EXIT
    [[ $seen == 1 ]] || die "a row written on the primary did not show up on the replica within ${PGREPLICA_TIMEOUT}s"
    log "verified: a row written on the primary was visible on the replica after $((now_ms - started_ms)) ms"
}

print_summary() {
    local row
    row=$(replica_sql "SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver), (SELECT slot_name FROM pg_stat_wal_receiver), pg_last_wal_replay_lsn()") || return 0
    log "replica: postgresql://$PG_SUPERUSER@$PGREPLICA_HOST:$PGREPLICA_PORT  in_recovery|wal_receiver|slot|replay_lsn = $row"
}

# ---------------------------------------------------------------- commands

cmd_up() {
    check_primary
    ensure_primary_hba

    # Is there a server on the replica port, and is it ours?
    if replica_answers; then
        local other
        other=$(replica_sql "SHOW data_directory" 2>/dev/null || true)
        if [[ -n $other && $(realpath -m -- "$other") != $(realpath -m -- "$PGREPLICA_DATA") ]]; then
            die "port $PGREPLICA_PORT is taken by another PostgreSQL server (data dir $other); stop it or set PGREPLICA_PORT"
        fi
    fi

    local problem
    problem=$(datadir_problem)
    if [[ $problem == absent ]]; then
        log "no replica data dir at $PGREPLICA_DATA yet: creating the replica"
        rebuild_replica
    elif [[ -n $problem ]]; then
        log "replica data dir $PGREPLICA_DATA is unusable: $problem -> removing and rebuilding"
        rebuild_replica
    elif replica_running; then
        if replica_answers && replica_streaming; then
            log "replica already running on port $PGREPLICA_PORT, in recovery and streaming: nothing to do"
            print_summary
            return 0
        fi
        log "replica is running but not streaming yet; waiting up to ${PGREPLICA_TIMEOUT}s"
        if wait_streaming; then
            log "replica is streaming"
            print_summary
            return 0
        fi
        log "replica still not streaming -> removing and rebuilding; last lines of $PGREPLICA_LOG:"
        tail -n 5 "$PGREPLICA_LOG" >&2 || true
        rebuild_replica
    else
        if [[ -z $(slot_state) ]]; then
            log "replication slot $PGREPLICA_SLOT is gone from the primary (WAL may be missing) -> rebuilding"
            rebuild_replica
        else
            log "replica data dir $PGREPLICA_DATA is valid but the replica is stopped"
            write_replica_config
        fi
    fi

    if ! start_replica || ! wait_streaming; then
        [[ -n ${REBUILT_ONCE:-} ]] && die "replica did not reach streaming state; see $PGREPLICA_LOG"
        warn "replica did not reach streaming state within ${PGREPLICA_TIMEOUT}s; rebuilding once"
        tail -n 10 "$PGREPLICA_LOG" >&2 || true
        REBUILT_ONCE=1
        rebuild_replica
        start_replica || die "replica failed to start; see $PGREPLICA_LOG"
        wait_streaming || die "replica did not reach streaming state; see $PGREPLICA_LOG"
    fi
    log "replica is up on port $PGREPLICA_PORT, in recovery and streaming"
    verify_replication
    print_summary
}

cmd_stop() {
    if replica_running; then
        stop_replica loud
        log "stopped (data dir and replication slot $PGREPLICA_SLOT kept; 'destroy' removes both)"
    else
        log "replica is not running; nothing to stop"
    fi
}

cmd_destroy() {
    check_primary
    assert_safe_to_remove
    stop_replica quiet
    if [[ -e $PGREPLICA_DATA ]]; then
        log "removing $PGREPLICA_DATA"
        rm -rf -- "$PGREPLICA_DATA"
    fi
    drop_stale_slot
    log "destroyed"
}

cmd_status() {
    local healthy=1 problem=""
    log "data dir: $PGREPLICA_DATA"
    if [[ -d $PGREPLICA_DATA ]]; then
        if "$(pgbin pg_isready)" -q -h "$PGPRIMARY_HOST" -p "$PGPRIMARY_PORT" -t 3 >/dev/null 2>&1; then
            check_primary >/dev/null
            problem=$(datadir_problem)
            log "data dir check: ${problem:-ok}"
            log "primary slot $PGREPLICA_SLOT: $(primary_sql "SELECT CASE WHEN active THEN 'active' ELSE 'inactive' END || ', restart_lsn ' || coalesce(restart_lsn::text, '-') FROM pg_replication_slots WHERE slot_name = $(sql_lit "$PGREPLICA_SLOT")" || true)"
        else
            log "primary $PGPRIMARY_HOST:$PGPRIMARY_PORT is not reachable"
        fi
    else
        log "data dir check: absent"
    fi
    if replica_running; then
        log "postmaster: running"
    else
        log "postmaster: not running"
    fi
    if replica_answers && replica_streaming; then
        healthy=0
        print_summary
        log "status: healthy (in recovery, streaming)"
    else
        log "status: NOT streaming"
    fi
    return "$healthy"
}

main() {
    local cmd=${1:-up}
    case $cmd in
    up | start | stop | status | destroy) ;;
    -h | --help | help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        return 0
        ;;
    *) die "unknown command '$cmd' (use: up | stop | status | destroy)" ;;
    esac
    [[ -x $(pgbin pg_ctl) ]] || die "PostgreSQL $PG_MAJOR binaries not found in $PG_BINDIR"
    [[ $PGREPLICA_PORT != "$PGPRIMARY_PORT" ]] || die "PGREPLICA_PORT and PGPRIMARY_PORT are both $PGREPLICA_PORT"
    [[ $PGREPLICA_SLOT =~ ^[a-z0-9_]+$ ]] || die "PGREPLICA_SLOT must match [a-z0-9_]+ (got '$PGREPLICA_SLOT')"
    if [[ $(id -u) -ne 0 && $(id -un) != "$PG_OS_USER" ]]; then
        die "run as root or as the $PG_OS_USER user"
    fi
    if [[ $cmd != status ]]; then
        [[ -d $(dirname -- "$LOCK_FILE") ]] || LOCK_FILE=/tmp/sqlperf-pg-replica.lock
        exec 9>>"$LOCK_FILE"
        chmod 0664 "$LOCK_FILE" 2>/dev/null || true
        flock -w 300 9 || die "another pg-replica.sh is running (lock $LOCK_FILE)"
    fi
    case $cmd in
    up | start) cmd_up ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    destroy) cmd_destroy ;;
    esac
}

main "$@"
