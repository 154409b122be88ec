"""Controller schema, as versioned migrations, one list per SQL dialect.

``SQLITE_MIGRATIONS``: index + 1 == ``PRAGMA user_version``; 1-5 are as released (stores
written by earlier versions upgrade through them), 6 on gives the portable schema.
``POSTGRES_MIGRATIONS``: a fresh history giving the same logical schema as all of
``SQLITE_MIGRATIONS`` (same tables, same columns; tests/controller/store_contract checks
it): ``BIGINT`` for every integer (epochs are signed 64-bit), ``DOUBLE PRECISION`` for
times, ``BYTEA`` for bytes, ``TEXT`` for text and JSON text, identity columns for ids.

Rules both follow (controller/store/sql.py): no reliance on ``rowid``; insertion order is
an explicit ``seq`` / ``id`` column; every epoch is an INTEGER (a node's unsigned 64-bit
epoch is stored as the signed integer with the same bits, ``domain/streams.py``).
"""

SQLITE_MIGRATIONS = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE operator_tokens (
        token_hash TEXT PRIMARY KEY, role TEXT NOT NULL, label TEXT,
        created_at REAL NOT NULL);
    CREATE TABLE join_tokens (
        token_hash TEXT PRIMARY KEY, expires_at REAL NOT NULL, uses_left INTEGER NOT NULL,
        labels TEXT NOT NULL, created_at REAL NOT NULL);
    CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY, public_key BLOB NOT NULL, labels TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1, created_at REAL NOT NULL,
        current_session TEXT, last_seen_at REAL, closed_at REAL,
        closed_by_goodbye INTEGER NOT NULL DEFAULT 0,
        runtime_state TEXT, runtime_version TEXT, sidecar TEXT, capabilities TEXT);
    CREATE TABLE stream_cursors (
        node_id TEXT NOT NULL, stream TEXT NOT NULL, epoch,
        applied INTEGER NOT NULL DEFAULT 0, last INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (node_id, stream));
    CREATE TABLE edge_sessions (
        session_id TEXT PRIMARY KEY, node_id TEXT NOT NULL, remote TEXT,
        opened_at REAL NOT NULL, closed_at REAL, close_code INTEGER, reason TEXT,
        resumed INTEGER NOT NULL, previous_session TEXT, runtime_version TEXT,
        sidecar_version TEXT);
    CREATE INDEX edge_sessions_node ON edge_sessions (node_id, opened_at);
    CREATE TABLE commands (
        command_id TEXT PRIMARY KEY, node_id TEXT NOT NULL, kind TEXT NOT NULL,
        args TEXT NOT NULL, state TEXT NOT NULL, epoch INTEGER, q INTEGER,
        created_at REAL NOT NULL, deadline REAL, idem_key TEXT,
        exit_code INTEGER, error TEXT, result TEXT, started_ms INTEGER, finished_ms INTEGER,
        updated_at REAL NOT NULL, log_bytes INTEGER NOT NULL DEFAULT 0,
        log_dropped_bytes INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX commands_queue ON commands (node_id, state, created_at);
    CREATE INDEX commands_seq ON commands (node_id, epoch, q);
    CREATE UNIQUE INDEX commands_idem ON commands (node_id, idem_key);
    CREATE TABLE idempotency_keys (
        node_id TEXT NOT NULL, k TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (node_id, k));
    CREATE INDEX idempotency_keys_at ON idempotency_keys (at);
    CREATE TABLE command_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, command_id TEXT NOT NULL, state TEXT NOT NULL,
        at REAL NOT NULL, detail TEXT);
    CREATE INDEX command_events_cmd ON command_events (command_id, id);
    CREATE TABLE downlink_outbox (
        node_id TEXT NOT NULL, epoch INTEGER NOT NULL, q INTEGER NOT NULL,
        frame BLOB NOT NULL, command_id TEXT,
        PRIMARY KEY (node_id, epoch, q));
    CREATE TABLE logs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, command_id TEXT, node_id TEXT NOT NULL,
        source TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL, dropped INTEGER NOT NULL,
        at REAL NOT NULL);
    CREATE INDEX logs_cmd ON logs (command_id, id);
    CREATE TABLE node_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, node_id TEXT NOT NULL, kind TEXT NOT NULL,
        data TEXT NOT NULL, at REAL NOT NULL);
    CREATE INDEX node_events_node ON node_events (node_id, id);
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, target TEXT, detail TEXT)
    """,
    # 2: the policy a node reports in force (node.event kind "policy")
    """
    ALTER TABLE nodes ADD COLUMN policy TEXT
    """,
    # 3: the node's managed apps as it last reported them (node.event kind "apps")
    """
    ALTER TABLE nodes ADD COLUMN apps TEXT
    """,
    # 4: byte budgets per node (store/quotas.py). Each stored node event and log chunk
    # carries the bytes it is charged; node_usage keeps each node's running totals per
    # budget ('events', 'logs' = all its logs, 'node_logs' = logs not tied to a command)
    # and what was pruned or refused, so no budget check scans the table.
    """
    ALTER TABLE node_events ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
    UPDATE node_events SET size = 64 + length(CAST(kind AS BLOB)) + length(CAST(data AS BLOB));
    ALTER TABLE logs ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
    UPDATE logs SET size = 64 + length(CAST(source AS BLOB)) + length(data);
    CREATE INDEX logs_node ON logs (node_id, id);
    CREATE INDEX logs_node_level ON logs (node_id, id) WHERE command_id IS NULL;
    CREATE TABLE node_usage (
        node_id TEXT NOT NULL, what TEXT NOT NULL,
        items INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,
        pruned_items INTEGER NOT NULL DEFAULT 0, pruned_bytes INTEGER NOT NULL DEFAULT 0,
        refused_items INTEGER NOT NULL DEFAULT 0, refused_bytes INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (node_id, what));
    INSERT INTO node_usage (node_id, what, items, bytes)
        SELECT node_id, 'events', count(*), sum(size) FROM node_events GROUP BY node_id;
    INSERT INTO node_usage (node_id, what, items, bytes)
        SELECT node_id, 'logs', count(*), sum(size) FROM logs GROUP BY node_id;
    INSERT INTO node_usage (node_id, what, items, bytes)
        SELECT node_id, 'node_logs', count(*), sum(size) FROM logs
        WHERE command_id IS NULL GROUP BY node_id
    """,
    # 5: poison frames (docs/protocol.md §3): class A frames refused for their content, the
    # newest per node kept with their reason, the rest counted in nodes.dead_letters_total;
    # and the cmd stream's sent mark (the highest q written to the node in this epoch), so a
    # hello's acks.cmd beyond it starts a new epoch (rows from before: everything assigned
    # may have been sent)
    """
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT, node_id TEXT NOT NULL, stream TEXT NOT NULL,
        q INTEGER NOT NULL, frame_type TEXT NOT NULL, frame_id TEXT, reason TEXT NOT NULL,
        excerpt TEXT NOT NULL, at REAL NOT NULL);
    CREATE INDEX dead_letters_node ON dead_letters (node_id, id);
    ALTER TABLE nodes ADD COLUMN dead_letters_total INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE stream_cursors ADD COLUMN sent INTEGER NOT NULL DEFAULT 0;
    UPDATE stream_cursors SET sent = last
    """,
    # 6: the portable schema (issue 12). Epochs become INTEGER (the evt epoch was kept as
    # text; a text epoch that is not a signed 64-bit integer, which only a foreign node could
    # have sent, is forgotten: the next hello records it afresh). Commands and sessions get
    # an explicit insertion order (``seq``) instead of the implicit rowid.
    """
    CREATE TABLE stream_cursors_v6 (
        node_id TEXT NOT NULL, stream TEXT NOT NULL, epoch INTEGER,
        applied INTEGER NOT NULL DEFAULT 0, last INTEGER NOT NULL DEFAULT 0,
        sent INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (node_id, stream));
    INSERT INTO stream_cursors_v6 (node_id, stream, epoch, applied, last, sent)
        SELECT node_id, stream,
               CASE WHEN typeof(epoch) = 'integer' THEN epoch
                    WHEN typeof(epoch) = 'text'
                         AND CAST(CAST(epoch AS INTEGER) AS TEXT) = epoch
                    THEN CAST(epoch AS INTEGER) END,
               applied, last, sent FROM stream_cursors;
    DROP TABLE stream_cursors;
    ALTER TABLE stream_cursors_v6 RENAME TO stream_cursors;
    CREATE TABLE commands_v6 (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, command_id TEXT NOT NULL UNIQUE,
        node_id TEXT NOT NULL, kind TEXT NOT NULL,
        args TEXT NOT NULL, state TEXT NOT NULL, epoch INTEGER, q INTEGER,
        created_at REAL NOT NULL, deadline REAL, idem_key TEXT,
        exit_code INTEGER, error TEXT, result TEXT, started_ms INTEGER, finished_ms INTEGER,
        updated_at REAL NOT NULL, log_bytes INTEGER NOT NULL DEFAULT 0,
        log_dropped_bytes INTEGER NOT NULL DEFAULT 0);
    INSERT INTO commands_v6 (seq, command_id, node_id, kind, args, state, epoch, q,
        created_at, deadline, idem_key, exit_code, error, result, started_ms, finished_ms,
        updated_at, log_bytes, log_dropped_bytes)
        SELECT rowid, command_id, node_id, kind, args, state, epoch, q,
        created_at, deadline, idem_key, exit_code, error, result, started_ms, finished_ms,
        updated_at, log_bytes, log_dropped_bytes FROM commands ORDER BY rowid;
    DROP TABLE commands;
    ALTER TABLE commands_v6 RENAME TO commands;
    CREATE INDEX commands_queue ON commands (node_id, state, created_at);
    CREATE INDEX commands_seq ON commands (node_id, epoch, q);
    CREATE UNIQUE INDEX commands_idem ON commands (node_id, idem_key);
    CREATE TABLE edge_sessions_v6 (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL UNIQUE,
        node_id TEXT NOT NULL, remote TEXT,
        opened_at REAL NOT NULL, closed_at REAL, close_code INTEGER, reason TEXT,
        resumed INTEGER NOT NULL, previous_session TEXT, runtime_version TEXT,
        sidecar_version TEXT);
    INSERT INTO edge_sessions_v6 (seq, session_id, node_id, remote, opened_at, closed_at,
        close_code, reason, resumed, previous_session, runtime_version, sidecar_version)
        SELECT rowid, session_id, node_id, remote, opened_at, closed_at,
        close_code, reason, resumed, previous_session, runtime_version, sidecar_version
        FROM edge_sessions ORDER BY rowid;
    DROP TABLE edge_sessions;
    ALTER TABLE edge_sessions_v6 RENAME TO edge_sessions;
    CREATE INDEX edge_sessions_node ON edge_sessions (node_id, opened_at)
    """,
    # 7: the replica that holds each session (NULL: a single controller), and the node's
    # current holder, so that a session's history names its replica and a replica that
    # restarts closes only the sessions it held
    """
    ALTER TABLE edge_sessions ADD COLUMN replica_id TEXT;
    ALTER TABLE nodes ADD COLUMN current_replica TEXT;
    CREATE INDEX edge_sessions_open ON edge_sessions (replica_id) WHERE closed_at IS NULL
    """,
    # 8: the ownership epoch: each hello's claim of a node adds one (compare-and-set on the
    # value it read), and its session records the epoch it holds the node in
    """
    ALTER TABLE nodes ADD COLUMN owner_epoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE edge_sessions ADD COLUMN owner_epoch INTEGER
    """,
    # 9: jobs, one command over many nodes
    # (store/jobs.py). A job's part on each node is a row of job_nodes: 'pending' until
    # released, 'releasing' while its command is being submitted, 'submitted' (its state is
    # then its command's), or an end without a command ('offline', 'skipped', 'cancelled',
    # 'failed'); ``pos`` is the order parts are released in.
    """
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL, args TEXT NOT NULL, selector TEXT NOT NULL,
        offline TEXT NOT NULL, max_in_flight INTEGER, ttl_s REAL, state TEXT NOT NULL,
        actor TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
        finished_at REAL);
    CREATE INDEX jobs_unfinished ON jobs (finished_at, seq);
    CREATE TABLE job_nodes (
        job_id TEXT NOT NULL, node_id TEXT NOT NULL, pos INTEGER NOT NULL,
        state TEXT NOT NULL, command_id TEXT, detail TEXT, updated_at REAL NOT NULL,
        PRIMARY KEY (job_id, node_id));
    CREATE INDEX job_nodes_pos ON job_nodes (job_id, pos)
    """,
    # 10: roles and audit (issue 13). Operator and join tokens get a
    # public id (the first 16 hex digits of the SHA-256 they are stored as: the same for rows
    # from before), operator tokens an expiry and a revocation time; audit rows name the
    # token and role of a request and the HTTP status it got. Tokens were already stored as
    # SHA-256, never in plain.
    """
    ALTER TABLE operator_tokens ADD COLUMN token_id TEXT;
    ALTER TABLE operator_tokens ADD COLUMN expires_at REAL;
    ALTER TABLE operator_tokens ADD COLUMN revoked_at REAL;
    UPDATE operator_tokens SET token_id = 'tk_' || substr(token_hash, 1, 16);
    CREATE UNIQUE INDEX operator_tokens_id ON operator_tokens (token_id);
    ALTER TABLE join_tokens ADD COLUMN token_id TEXT;
    UPDATE join_tokens SET token_id = 'jt_' || substr(token_hash, 1, 16);
    CREATE UNIQUE INDEX join_tokens_id ON join_tokens (token_id);
    ALTER TABLE audit_log ADD COLUMN token_id TEXT;
    ALTER TABLE audit_log ADD COLUMN role TEXT;
    ALTER TABLE audit_log ADD COLUMN status INTEGER
    """,
    # 11: the node's health (readiness tree and recent incidents) as it last reported it
    # (node.event kind "health", protocol/health.py)
    """
    ALTER TABLE nodes ADD COLUMN health TEXT
    """,
    # 12: bundles (store/bundles.py): one row per published (name, version), immutable; the
    # bundle file's bytes in bundle_chunks rows of at most chunk_bytes each (a cluster has no
    # shared disk), under a blob_id that a bundles row names once the upload is complete
    # (chunks no row names are an unfinished upload, pruned); bundle_names serializes the
    # publishes of one name (its row is locked) and keeps its highest version
    """
    CREATE TABLE bundles (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version INTEGER NOT NULL,
        kind TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
        manifest BLOB NOT NULL, signatures BLOB NOT NULL, key_ids TEXT NOT NULL,
        blob_id TEXT NOT NULL, chunk_bytes INTEGER NOT NULL, publisher TEXT NOT NULL,
        published_at REAL NOT NULL, UNIQUE (name, version));
    CREATE TABLE bundle_chunks (
        blob_id TEXT NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL, at REAL NOT NULL,
        PRIMARY KEY (blob_id, idx));
    CREATE INDEX bundle_chunks_at ON bundle_chunks (at);
    CREATE TABLE bundle_names (name TEXT PRIMARY KEY, max_version INTEGER NOT NULL)
    """,
    # 13: rollouts (store/rollouts.py, protocol/rollout.py). ``nodes.bundles`` is the node's
    # bundles as its bundle.status reports last left them ({name: {active, last_known_good,
    # state, version, reason, code, updated_at}}, at most MAX_BUNDLE_NAMES names). A
    # rollout's spec is its checked request as JSON; ``ring`` the index of its current ring;
    # ``why`` the machine-readable reason of its last stop; each node of it is a row of
    # rollout_nodes ('pending', 'offering' while its update.now is being submitted, then the
    # states its bundle.status reports), with its ring, its placement order and its offer's
    # command, and the same for a rollback offer
    """
    ALTER TABLE nodes ADD COLUMN bundles TEXT;
    CREATE TABLE rollouts (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, rollout_id TEXT NOT NULL UNIQUE,
        bundle TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL,
        sha256 TEXT NOT NULL, size INTEGER NOT NULL, spec TEXT NOT NULL,
        state TEXT NOT NULL, ring INTEGER NOT NULL, why TEXT,
        accepted_failures INTEGER NOT NULL, actor TEXT NOT NULL, created_at REAL NOT NULL,
        updated_at REAL NOT NULL, finished_at REAL);
    CREATE INDEX rollouts_unfinished ON rollouts (finished_at, seq);
    CREATE TABLE rollout_nodes (
        rollout_id TEXT NOT NULL, node_id TEXT NOT NULL, ring INTEGER NOT NULL,
        pos INTEGER NOT NULL, state TEXT NOT NULL, code TEXT, reason TEXT,
        command_id TEXT, rollback_version INTEGER, rollback_state TEXT,
        rollback_command_id TEXT, updated_at REAL NOT NULL,
        PRIMARY KEY (rollout_id, node_id));
    CREATE INDEX rollout_nodes_pos ON rollout_nodes (rollout_id, pos)
    """,
]

MIGRATIONS = SQLITE_MIGRATIONS  # the name callers used before there were two dialects

POSTGRES_MIGRATIONS = [
    # 1: the schema of SQLITE_MIGRATIONS 1-6, in PostgreSQL's types
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE operator_tokens (
        token_hash TEXT PRIMARY KEY, role TEXT NOT NULL, label TEXT,
        created_at DOUBLE PRECISION NOT NULL);
    CREATE TABLE join_tokens (
        token_hash TEXT PRIMARY KEY, expires_at DOUBLE PRECISION NOT NULL,
        uses_left BIGINT NOT NULL, labels TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL);
    CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY, public_key BYTEA NOT NULL, labels TEXT NOT NULL,
        enabled BIGINT NOT NULL DEFAULT 1, created_at DOUBLE PRECISION NOT NULL,
        current_session TEXT, last_seen_at DOUBLE PRECISION, closed_at DOUBLE PRECISION,
        closed_by_goodbye BIGINT NOT NULL DEFAULT 0,
        runtime_state TEXT, runtime_version TEXT, sidecar TEXT, capabilities TEXT,
        policy TEXT, apps TEXT, dead_letters_total BIGINT NOT NULL DEFAULT 0);
    CREATE TABLE stream_cursors (
        node_id TEXT NOT NULL, stream TEXT NOT NULL, epoch BIGINT,
        applied BIGINT NOT NULL DEFAULT 0, last BIGINT NOT NULL DEFAULT 0,
        sent BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (node_id, stream));
    CREATE TABLE edge_sessions (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        session_id TEXT NOT NULL UNIQUE, node_id TEXT NOT NULL, remote TEXT,
        opened_at DOUBLE PRECISION NOT NULL, closed_at DOUBLE PRECISION, close_code BIGINT,
        reason TEXT, resumed BIGINT NOT NULL, previous_session TEXT, runtime_version TEXT,
        sidecar_version TEXT);
    CREATE INDEX edge_sessions_node ON edge_sessions (node_id, opened_at);
    CREATE TABLE commands (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        command_id TEXT NOT NULL UNIQUE, node_id TEXT NOT NULL, kind TEXT NOT NULL,
        args TEXT NOT NULL, state TEXT NOT NULL, epoch BIGINT, q BIGINT,
        created_at DOUBLE PRECISION NOT NULL, deadline DOUBLE PRECISION, idem_key TEXT,
        exit_code BIGINT, error TEXT, result TEXT, started_ms BIGINT, finished_ms BIGINT,
        updated_at DOUBLE PRECISION NOT NULL, log_bytes BIGINT NOT NULL DEFAULT 0,
        log_dropped_bytes BIGINT NOT NULL DEFAULT 0);
    CREATE INDEX commands_queue ON commands (node_id, state, created_at);
    CREATE INDEX commands_seq ON commands (node_id, epoch, q);
    CREATE UNIQUE INDEX commands_idem ON commands (node_id, idem_key);
    CREATE TABLE idempotency_keys (
        node_id TEXT NOT NULL, k TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (node_id, k));
    CREATE INDEX idempotency_keys_at ON idempotency_keys (at);
    CREATE TABLE command_events (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, command_id TEXT NOT NULL,
        state TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, detail TEXT);
    CREATE INDEX command_events_cmd ON command_events (command_id, id);
    CREATE TABLE downlink_outbox (
        node_id TEXT NOT NULL, epoch BIGINT NOT NULL, q BIGINT NOT NULL,
        frame BYTEA NOT NULL, command_id TEXT,
        PRIMARY KEY (node_id, epoch, q));
    CREATE TABLE logs (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, command_id TEXT,
        node_id TEXT NOT NULL, source TEXT NOT NULL, seq BIGINT NOT NULL, data BYTEA NOT NULL,
        dropped BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL,
        size BIGINT NOT NULL DEFAULT 0);
    CREATE INDEX logs_cmd ON logs (command_id, id);
    CREATE INDEX logs_node ON logs (node_id, id);
    CREATE INDEX logs_node_level ON logs (node_id, id) WHERE command_id IS NULL;
    CREATE TABLE node_events (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, node_id TEXT NOT NULL,
        kind TEXT NOT NULL, data TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
        size BIGINT NOT NULL DEFAULT 0);
    CREATE INDEX node_events_node ON node_events (node_id, id);
    CREATE TABLE audit_log (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, at DOUBLE PRECISION NOT NULL,
        actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT, detail TEXT);
    CREATE TABLE node_usage (
        node_id TEXT NOT NULL, what TEXT NOT NULL,
        items BIGINT NOT NULL DEFAULT 0, bytes BIGINT NOT NULL DEFAULT 0,
        pruned_items BIGINT NOT NULL DEFAULT 0, pruned_bytes BIGINT NOT NULL DEFAULT 0,
        refused_items BIGINT NOT NULL DEFAULT 0, refused_bytes BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (node_id, what));
    CREATE TABLE dead_letters (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, node_id TEXT NOT NULL,
        stream TEXT NOT NULL, q BIGINT NOT NULL, frame_type TEXT NOT NULL, frame_id TEXT,
        reason TEXT NOT NULL, excerpt TEXT NOT NULL, at DOUBLE PRECISION NOT NULL);
    CREATE INDEX dead_letters_node ON dead_letters (node_id, id)
    """,
    # 2: = SQLITE_MIGRATIONS 7 (replica ids)
    """
    ALTER TABLE edge_sessions ADD COLUMN replica_id TEXT;
    ALTER TABLE nodes ADD COLUMN current_replica TEXT;
    CREATE INDEX edge_sessions_open ON edge_sessions (replica_id) WHERE closed_at IS NULL
    """,
    # 3: = SQLITE_MIGRATIONS 8 (the ownership epoch)
    """
    ALTER TABLE nodes ADD COLUMN owner_epoch BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE edge_sessions ADD COLUMN owner_epoch BIGINT
    """,
    # 4: = SQLITE_MIGRATIONS 9 (jobs)
    """
    CREATE TABLE jobs (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, job_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL, args TEXT NOT NULL, selector TEXT NOT NULL,
        offline TEXT NOT NULL, max_in_flight BIGINT, ttl_s DOUBLE PRECISION,
        state TEXT NOT NULL, actor TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, finished_at DOUBLE PRECISION);
    CREATE INDEX jobs_unfinished ON jobs (finished_at, seq);
    CREATE TABLE job_nodes (
        job_id TEXT NOT NULL, node_id TEXT NOT NULL, pos BIGINT NOT NULL,
        state TEXT NOT NULL, command_id TEXT, detail TEXT,
        updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (job_id, node_id));
    CREATE INDEX job_nodes_pos ON job_nodes (job_id, pos)
    """,
    # 5: = SQLITE_MIGRATIONS 10 (token ids, expiry and revocation; who
    # the audit rows name)
    """
    ALTER TABLE operator_tokens ADD COLUMN token_id TEXT;
    ALTER TABLE operator_tokens ADD COLUMN expires_at DOUBLE PRECISION;
    ALTER TABLE operator_tokens ADD COLUMN revoked_at DOUBLE PRECISION;
    UPDATE operator_tokens SET token_id = 'tk_' || substr(token_hash, 1, 16);
    CREATE UNIQUE INDEX operator_tokens_id ON operator_tokens (token_id);
    ALTER TABLE join_tokens ADD COLUMN token_id TEXT;
    UPDATE join_tokens SET token_id = 'jt_' || substr(token_hash, 1, 16);
    CREATE UNIQUE INDEX join_tokens_id ON join_tokens (token_id);
    ALTER TABLE audit_log ADD COLUMN token_id TEXT;
    ALTER TABLE audit_log ADD COLUMN role TEXT;
    ALTER TABLE audit_log ADD COLUMN status BIGINT
    """,
    # 6: = SQLITE_MIGRATIONS 11 (the node's health)
    """
    ALTER TABLE nodes ADD COLUMN health TEXT
    """,
    # 7: = SQLITE_MIGRATIONS 12 (bundles)
    """
    CREATE TABLE bundles (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name TEXT NOT NULL,
        version BIGINT NOT NULL, kind TEXT NOT NULL, sha256 TEXT NOT NULL,
        size BIGINT NOT NULL, manifest BYTEA NOT NULL, signatures BYTEA NOT NULL,
        key_ids TEXT NOT NULL, blob_id TEXT NOT NULL, chunk_bytes BIGINT NOT NULL,
        publisher TEXT NOT NULL, published_at DOUBLE PRECISION NOT NULL,
        UNIQUE (name, version));
    CREATE TABLE bundle_chunks (
        blob_id TEXT NOT NULL, idx BIGINT NOT NULL, data BYTEA NOT NULL,
        at DOUBLE PRECISION NOT NULL, PRIMARY KEY (blob_id, idx));
    CREATE INDEX bundle_chunks_at ON bundle_chunks (at);
    CREATE TABLE bundle_names (name TEXT PRIMARY KEY, max_version BIGINT NOT NULL)
    """,
    # 8: = SQLITE_MIGRATIONS 13 (the node's bundles, rollouts)
    """
    ALTER TABLE nodes ADD COLUMN bundles TEXT;
    CREATE TABLE rollouts (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        rollout_id TEXT NOT NULL UNIQUE, bundle TEXT NOT NULL, version BIGINT NOT NULL,
        kind TEXT NOT NULL, sha256 TEXT NOT NULL, size BIGINT NOT NULL, spec TEXT NOT NULL,
        state TEXT NOT NULL, ring BIGINT NOT NULL, why TEXT,
        accepted_failures BIGINT NOT NULL, actor TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION);
    CREATE INDEX rollouts_unfinished ON rollouts (finished_at, seq);
    CREATE TABLE rollout_nodes (
        rollout_id TEXT NOT NULL, node_id TEXT NOT NULL, ring BIGINT NOT NULL,
        pos BIGINT NOT NULL, state TEXT NOT NULL, code TEXT, reason TEXT,
        command_id TEXT, rollback_version BIGINT, rollback_state TEXT,
        rollback_command_id TEXT, updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (rollout_id, node_id));
    CREATE INDEX rollout_nodes_pos ON rollout_nodes (rollout_id, pos)
    """,
]
