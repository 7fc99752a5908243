//! The tamper-evidence schema both audit logs share (issue #7), used by one
//! migration in each migrator: a monotonic `seq` and the per-entry
//! `entry_hash`, `mac`, `mac_key_version`; a write-once seals table; a
//! write-once checkpoints table (what a retention purge leaves behind); and
//! a purge-permit table through which alone whole sealed ranges may be
//! deleted past the write-once triggers.
//!
//! `seq` per backend:
//! - PostgreSQL keeps `id` as the primary key and adds `seq bigint NOT NULL
//!   UNIQUE DEFAULT nextval(<table>_seq_seq)`. Writers draw their seq
//!   through `<prefix>_audit_next_seq()`, which first takes ROW EXCLUSIVE on
//!   the log: a seq is then only ever held by a transaction that the
//!   sealer's SHARE lock waits for (see `store::audit_chain`).
//! - SQLite cannot add a primary key or an autoincrement column to a table,
//!   so the log is rebuilt with `seq INTEGER PRIMARY KEY AUTOINCREMENT`
//!   (rowid itself would be reused after deleting the newest rows;
//!   AUTOINCREMENT never hands out a number twice) and `id` UNIQUE; rows are
//!   copied in `occurred_at, id` order, then indexes and triggers recreated.
//!
//! Existing rows keep `mac` NULL: the migration has no access to the HSM.
//! The first seal adopts them (see docs/audit.md).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, blob, integer, json_binary, pk_uuid, text, timestamp_with_time_zone,
};
use sea_orm_migration::sea_orm::DatabaseBackend;

use crate::sql::{self, index};

/// Names of one log's tables and objects.
pub struct AuditTables {
    /// `clm_core` or `clm_secure`: prefix of PostgreSQL functions.
    pub prefix: &'static str,
    pub log: &'static str,
    pub seals: &'static str,
    pub checkpoints: &'static str,
    pub permits: &'static str,
    /// Indexes of the log as the init migration created them (recreated
    /// after SQLite's rebuild).
    pub indexes: &'static [(&'static str, &'static [&'static str])],
    /// Added here: keyset pagination within an organisation.
    pub org_seq_index: &'static str,
}

/// Columns of the log before this migration, in table order.
const OLD_COLUMNS: &[&str] = &[
    "id",
    "occurred_at",
    "actor_id",
    "actor_kind",
    "organization_id",
    "action",
    "target_type",
    "target_id",
    "outcome",
    "request_id",
    "source_ip",
    "user_agent",
    "details",
];

fn new_tables(t: &AuditTables) -> Vec<TableCreateStatement> {
    vec![
        Table::create()
            .table(t.seals)
            .col(big_integer("seal_no").primary_key())
            .col(big_integer("first_seq"))
            .col(big_integer("last_seq"))
            .col(big_integer("entry_count"))
            .col(json_binary("gaps"))
            .col(blob("running_hash"))
            .col(blob("prev_mac"))
            .col(integer("key_version"))
            .col(timestamp_with_time_zone("sealed_at"))
            .col(blob("mac"))
            .check(sql::rule(t.seals, "range", "first_seq <= last_seq + 1"))
            .to_owned(),
        Table::create()
            .table(t.checkpoints)
            .col(big_integer("purged_through_seal").primary_key())
            .col(big_integer("purged_through_seq"))
            .col(blob("seal_mac"))
            .col(integer("key_version"))
            .col(timestamp_with_time_zone("created_at"))
            .col(blob("mac"))
            .to_owned(),
        Table::create()
            .table(t.permits)
            .col(pk_uuid("id"))
            .col(text("table_name"))
            .col(big_integer("up_to"))
            .col(timestamp_with_time_zone("created_at"))
            .to_owned(),
    ]
}

/// UPDATE refused; DELETE refused unless a permit row of this transaction
/// covers the row (`OLD.<column> <= up_to`).
fn guarded_triggers(
    t: &AuditTables,
    table: &str,
    column: &str,
    backend: DatabaseBackend,
) -> Vec<String> {
    let permits = t.permits;
    match backend {
        DatabaseBackend::Postgres => vec![format!(
            "CREATE TRIGGER {table}_write_once BEFORE UPDATE OR DELETE ON {table} FOR EACH ROW \
             EXECUTE FUNCTION {prefix}_audit_guard('{column}')",
            prefix = t.prefix
        )],
        _ => vec![
            format!(
                "CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} \
                 BEGIN SELECT RAISE(ABORT, '{table} is write-once'); END"
            ),
            format!(
                "CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} \
                 WHEN NOT EXISTS (SELECT 1 FROM {permits} p \
                   WHERE p.table_name = '{table}' AND OLD.{column} <= p.up_to) \
                 BEGIN SELECT RAISE(ABORT, '{table} is write-once'); END"
            ),
        ],
    }
}

fn pg_functions(t: &AuditTables) -> Vec<String> {
    let (prefix, log, permits) = (t.prefix, t.log, t.permits);
    vec![
        // The column to compare is the trigger's argument; to_jsonb reads
        // it by name so one function serves the log and its seals.
        format!(
            "CREATE OR REPLACE FUNCTION {prefix}_audit_guard() RETURNS trigger AS $$ \
             BEGIN \
               IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM {permits} p \
                    WHERE p.table_name = TG_TABLE_NAME \
                      AND (to_jsonb(OLD) ->> TG_ARGV[0])::bigint <= p.up_to) THEN \
                 RETURN OLD; \
               END IF; \
               RAISE EXCEPTION '% is write-once', TG_TABLE_NAME; \
             END $$ LANGUAGE plpgsql"
        ),
        // ROW EXCLUSIVE does not conflict with other writers, only with the
        // sealer's brief SHARE lock: a seq drawn here belongs to a
        // transaction the sealer waits for.
        format!(
            "CREATE OR REPLACE FUNCTION {prefix}_audit_next_seq() RETURNS bigint AS $$ \
             BEGIN \
               LOCK TABLE {log} IN ROW EXCLUSIVE MODE; \
               RETURN nextval('{log}_seq_seq'); \
             END $$ LANGUAGE plpgsql"
        ),
    ]
}

fn pg_log_changes(t: &AuditTables) -> Vec<String> {
    let log = t.log;
    vec![
        format!("DROP TRIGGER IF EXISTS {log}_write_once ON {log}"),
        format!(
            "ALTER TABLE {log} ADD COLUMN seq bigint, ADD COLUMN entry_hash bytea, \
             ADD COLUMN mac bytea, ADD COLUMN mac_key_version integer"
        ),
        format!("CREATE SEQUENCE {log}_seq_seq OWNED BY {log}.seq"),
        format!(
            "UPDATE {log} SET seq = o.n FROM \
             (SELECT id, row_number() OVER (ORDER BY occurred_at, id) AS n FROM {log}) o \
             WHERE {log}.id = o.id"
        ),
        format!(
            "SELECT setval('{log}_seq_seq', COALESCE((SELECT max(seq) FROM {log}), 0) + 1, false)"
        ),
        format!(
            "ALTER TABLE {log} ALTER COLUMN seq SET DEFAULT nextval('{log}_seq_seq'), \
             ALTER COLUMN seq SET NOT NULL"
        ),
        format!("ALTER TABLE {log} ADD CONSTRAINT uq_{log}_seq UNIQUE (seq)"),
    ]
}

fn sqlite_rebuild(t: &AuditTables) -> Vec<String> {
    let log = t.log;
    let cols = OLD_COLUMNS.join(", ");
    let mut out = vec![
        format!(
            "CREATE TABLE \"{log}_v2\" ( \
             \"seq\" integer NOT NULL PRIMARY KEY AUTOINCREMENT, \
             \"id\" uuid_text NOT NULL UNIQUE, \
             \"occurred_at\" timestamp_with_timezone_text NOT NULL, \
             \"actor_id\" uuid_text NULL, \
             \"actor_kind\" text NOT NULL, \
             \"organization_id\" uuid_text NULL, \
             \"action\" text NOT NULL, \
             \"target_type\" text NULL, \
             \"target_id\" text NULL, \
             \"outcome\" text NOT NULL, \
             \"request_id\" text NULL, \
             \"source_ip\" text NULL, \
             \"user_agent\" text NULL, \
             \"details\" jsonb_text NOT NULL, \
             \"entry_hash\" blob NULL, \
             \"mac\" blob NULL, \
             \"mac_key_version\" integer NULL, \
             CONSTRAINT \"ck_{log}_outcome\" CHECK (\"outcome\" IN ('success', 'failure', 'denied')) )"
        ),
        format!(
            "INSERT INTO \"{log}_v2\" ({cols}) SELECT {cols} FROM {log} ORDER BY occurred_at, id"
        ),
        format!("DROP TABLE {log}"),
        format!("ALTER TABLE \"{log}_v2\" RENAME TO {log}"),
    ];
    for (name, columns) in t.indexes {
        out.push(format!(
            "CREATE INDEX \"{name}\" ON \"{log}\" ({})",
            columns
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out
}

/// The migration's `up` for one log.
pub async fn up(manager: &SchemaManager<'_>, t: &AuditTables) -> Result<(), DbErr> {
    let backend = manager.get_database_backend();
    sql::create(manager, new_tables(t), vec![]).await?;
    let mut statements = Vec::new();
    if backend == DatabaseBackend::Postgres {
        statements.extend(pg_functions(t));
        statements.extend(pg_log_changes(t));
    } else {
        statements.extend(sqlite_rebuild(t));
    }
    statements.extend(guarded_triggers(t, t.log, "seq", backend));
    statements.extend(guarded_triggers(t, t.seals, "seal_no", backend));
    statements.extend(sql::write_once_trigger(t.prefix, t.checkpoints, backend));
    sql::run(manager, &statements).await?;
    manager
        .create_index(index(t.org_seq_index, t.log, &["organization_id", "seq"]))
        .await
}

/// The migration's `down`: back to the init migration's shape (rows stay,
/// their seq and MACs go).
pub async fn down(manager: &SchemaManager<'_>, t: &AuditTables) -> Result<(), DbErr> {
    let backend = manager.get_database_backend();
    let log = t.log;
    sql::drop_tables(manager, &[t.seals, t.checkpoints, t.permits]).await?;
    let mut statements = vec![format!("DROP INDEX IF EXISTS {}", t.org_seq_index)];
    if backend == DatabaseBackend::Postgres {
        statements.extend([
            format!("DROP TRIGGER IF EXISTS {log}_write_once ON {log}"),
            format!(
                "ALTER TABLE {log} DROP COLUMN seq, DROP COLUMN entry_hash, DROP COLUMN mac, \
                 DROP COLUMN mac_key_version"
            ),
            format!("DROP FUNCTION IF EXISTS {}_audit_guard()", t.prefix),
            format!("DROP FUNCTION IF EXISTS {}_audit_next_seq()", t.prefix),
        ]);
    } else {
        let cols = OLD_COLUMNS.join(", ");
        statements.extend([
            format!("DROP TRIGGER IF EXISTS {log}_no_update"),
            format!("DROP TRIGGER IF EXISTS {log}_no_delete"),
            format!("CREATE TABLE \"{log}_v1\" AS SELECT {cols} FROM {log} ORDER BY seq"),
            format!("DROP TABLE {log}"),
        ]);
        sql::run(manager, &statements).await?;
        manager.create_table(crate::sql::audit_table(log)).await?;
        statements = vec![
            format!("INSERT INTO {log} ({cols}) SELECT {cols} FROM \"{log}_v1\""),
            format!("DROP TABLE \"{log}_v1\""),
        ];
        for (name, columns) in t.indexes {
            statements.push(format!(
                "CREATE INDEX \"{name}\" ON \"{log}\" ({})",
                columns.join(", ")
            ));
        }
    }
    statements.extend(sql::write_once_trigger(t.prefix, log, backend));
    sql::run(manager, &statements).await
}
