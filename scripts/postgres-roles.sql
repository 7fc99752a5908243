-- Least-privilege PostgreSQL roles for clm: per database, an owner, a
-- runtime role and a read-only auditor role. The two databases' roles stay
-- apart: no role of one database can connect to the other (DESIGN.md: the
-- databases are never joined; clm_secure holds the wrapped keys).
--
-- Run it with psql, as a superuser, with -f (the script includes itself
-- once per database, by a path relative to this file):
--
--   psql -h db.example -U postgres -d postgres -X -v ON_ERROR_STOP=1 \
--        -v core_db=clm_core -v secure_db=clm_secure \
--        -f scripts/postgres-roles.sql
--
-- Both databases must exist. Run it again after every `clm migrate`: it is
-- idempotent, re-grants what a migration created, and narrows what the
-- default privileges over-grant (see "Runtime role"). When existing
-- tables are owned by another role (a database first migrated by the
-- superuser), it hands them to the owner role.
--
-- Variables (-v name=value), all optional; role names are cluster-wide:
--
--   core_db          clm_core            secure_db         clm_secure
--   core_owner       clm_core_owner      secure_owner      clm_secure_owner
--   core_app         clm_core_app        secure_app        clm_secure_app
--   core_auditor     clm_core_auditor    secure_auditor    clm_secure_auditor
--
-- Passwords are not this file's business. Set them afterwards with
-- psql's \password (it sends only a SCRAM verifier, nothing lands in a
-- shell history or the server log):
--
--   \password clm_core_app
--
-- What each role is for:
--
--   <db>_owner    LOGIN. Owns the schema `public` and every object in it.
--                 `clm migrate` runs as this role, before a new version is
--                 rolled out; nothing else does.
--   <db>_app      LOGIN. What `clm serve` and the other clm commands
--                 connect as: SELECT, INSERT, UPDATE, DELETE on the tables,
--                 USAGE on the sequences, EXECUTE on clm's functions. It
--                 owns nothing, so it can neither drop nor alter a table
--                 or a trigger (the audit logs' write-once triggers above
--                 all), and has no TRUNCATE, no CREATE, no TEMPORARY.
--   <db>_auditor  NOLOGIN; grant it to people (GRANT clm_core_auditor TO
--                 alice). SELECT on every table except the ones that hold
--                 credentials or key material: clm_core `users` (password
--                 hashes), `sessions` and `api_keys` (token digests),
--                 clm_secure `private_keys` (wrapped keys). A table added
--                 later is readable by default: a new table that holds
--                 secrets must be added to the list below.

\set ON_ERROR_STOP on

\if :{?clm_roles_database}
-- ------------------------------------------------------------------------
-- Second pass, included once per database (connected to it): :owner,
-- :app, :auditor and :auditor_denied name this database's roles.
-- ------------------------------------------------------------------------

BEGIN;

-- Only this database's roles may connect (PUBLIC also loses TEMPORARY).
REVOKE ALL ON DATABASE :"clm_roles_database" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"clm_roles_database" TO :"owner", :"app", :"auditor";

-- The owner owns the schema; nobody else may create in it.
ALTER SCHEMA public OWNER TO :"owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app", :"auditor";

-- Existing objects of another owner go to the owner role: tables (with
-- their indexes, triggers and the sequences they own), views, sequences of
-- their own, functions, enum and domain types. Extension members stay
-- where they are, and so do the functions of event triggers (a
-- superuser's business, not clm's).
SELECT format('ALTER %s public.%I OWNER TO %I',
              CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                             ELSE 'TABLE' END,
              c.relname, :'owner')
  FROM pg_class c
 WHERE c.relnamespace = 'public'::regnamespace
   AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND c.relowner <> :'owner'::regrole
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND (d.deptype = 'e' OR (c.relkind = 'S' AND d.deptype IN ('a', 'i'))))
 ORDER BY c.relkind = 'S', c.relname
\gexec
SELECT format('ALTER %s %s OWNER TO %I',
              CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE'
                             ELSE 'FUNCTION' END,
              p.oid::regprocedure, :'owner')
  FROM pg_proc p
 WHERE p.pronamespace = 'public'::regnamespace
   AND p.proowner <> :'owner'::regrole
   AND p.prorettype <> 'event_trigger'::regtype
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
\gexec
SELECT format('ALTER TYPE %s OWNER TO %I', t.oid::regtype, :'owner')
  FROM pg_type t
 WHERE t.typnamespace = 'public'::regnamespace
   AND t.typtype IN ('e', 'd')
   AND t.typowner <> :'owner'::regrole
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
\gexec

-- Runtime role: data, never the schema. TRUNCATE, REFERENCES and TRIGGER
-- are taken back in case anyone granted them.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app";
REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA public FROM :"app", :"auditor";
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO :"app";
-- clm calls <prefix>_audit_next_seq() to draw an audit seq; PUBLIC gets
-- no functions.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO :"app";

-- The migrators' tracking tables (seaql_migrations_core/_secure): read
-- only. Every clm command reads them at start to see whether a migration
-- is pending, and keeps SELECT for that: a role that can see no privilege
-- on them does not find them in information_schema, takes every migration
-- for pending and fails on the migrator's CREATE TABLE. Only the owner
-- (`clm migrate`) records a migration.
SELECT format('REVOKE INSERT, UPDATE, DELETE ON public.%I FROM %I', tablename, :'app')
  FROM pg_tables
 WHERE schemaname = 'public' AND tablename LIKE 'seaql\_migrations%'
\gexec

-- The audit logs, their seals and checkpoints are write-once (triggers
-- refuse UPDATE, and DELETE outside a retention purge); clm never updates
-- them, so the runtime role does not even hold UPDATE. It keeps DELETE:
-- the purge deletes whole sealed ranges through a permit row, and the
-- sealer's `LOCK TABLE <log> IN SHARE MODE` needs UPDATE, DELETE or
-- TRUNCATE on PostgreSQL.
SELECT format('REVOKE UPDATE ON public.%I FROM %I', tablename, :'app')
  FROM pg_tables
 WHERE schemaname = 'public' AND tablename ~ '^(secure_)?audit_(log|seals|checkpoints)$'
\gexec

-- Auditor: read everything but credentials and key material.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"auditor";
SELECT format('REVOKE ALL ON public.%I FROM %I', t, :'auditor')
  FROM unnest(string_to_array(:'auditor_denied', ',')) AS t
 WHERE to_regclass(format('public.%I', t)) IS NOT NULL
\gexec

-- Whatever later migrations create (as the owner) gets the same grants.
-- Default privileges cannot tell a tracking or audit table from any other:
-- re-running this script after `clm migrate` narrows those again.
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
  GRANT USAGE ON SEQUENCES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
  GRANT EXECUTE ON FUNCTIONS TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner"
  REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
  GRANT SELECT ON TABLES TO :"auditor";

-- Cleanup after an earlier draft of this script, whose opt-in
-- `runtime_schema_create` granted the runtime role CREATE on the schema
-- and installed an event trigger clm_schema_guard (clm now starts without
-- either). Nothing in this script creates them any more; these statements
-- only take them away where a run of that draft left them (quietly: no
-- "does not exist, skipping" on every run).
SET LOCAL client_min_messages = warning;
REVOKE CREATE ON SCHEMA public FROM :"app";
DROP EVENT TRIGGER IF EXISTS clm_schema_guard;
DROP FUNCTION IF EXISTS public.clm_schema_guard();

COMMIT;

\else
-- ------------------------------------------------------------------------
-- First pass: defaults, the roles, then each database in turn.
-- ------------------------------------------------------------------------

\if :{?core_db}
\else
\set core_db clm_core
\endif
\if :{?secure_db}
\else
\set secure_db clm_secure
\endif
\if :{?core_owner}
\else
\set core_owner clm_core_owner
\endif
\if :{?core_app}
\else
\set core_app clm_core_app
\endif
\if :{?core_auditor}
\else
\set core_auditor clm_core_auditor
\endif
\if :{?secure_owner}
\else
\set secure_owner clm_secure_owner
\endif
\if :{?secure_app}
\else
\set secure_app clm_secure_app
\endif
\if :{?secure_auditor}
\else
\set secure_auditor clm_secure_auditor
\endif

BEGIN;
SELECT format('CREATE ROLE %I', r)
  FROM unnest(ARRAY[:'core_owner', :'core_app', :'core_auditor',
                    :'secure_owner', :'secure_app', :'secure_auditor']) AS r
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r)
\gexec
-- No attribute beyond LOGIN; in particular none of these bypasses row
-- security, replicates, or creates roles or databases.
SELECT format('ALTER ROLE %I %s NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT',
              r, CASE WHEN r IN (:'core_auditor', :'secure_auditor') THEN 'NOLOGIN' ELSE 'LOGIN' END)
  FROM unnest(ARRAY[:'core_owner', :'core_app', :'core_auditor',
                    :'secure_owner', :'secure_app', :'secure_auditor']) AS r
\gexec
COMMIT;

\connect :"core_db"
\set clm_roles_database :core_db
\set owner :core_owner
\set app :core_app
\set auditor :core_auditor
\set auditor_denied 'users,sessions,api_keys'
\ir postgres-roles.sql

\connect :"secure_db"
-- The certificate search of clm_secure uses pg_trgm (migration
-- m20261201_000001_certificate_list). Creating an extension takes CREATE
-- on the database, which the owner role does not hold; the migration's
-- CREATE EXTENSION IF NOT EXISTS then finds it there.
CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;
\set clm_roles_database :secure_db
\set owner :secure_owner
\set app :secure_app
\set auditor :secure_auditor
\set auditor_denied 'private_keys'
\ir postgres-roles.sql

\unset clm_roles_database
\endif
