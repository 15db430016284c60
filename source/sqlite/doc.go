// Package sqlite is databus's embedded default source: it captures the
// committed changes of tables of one SQLite database file with triggers
// that write a change log into the same database, the design of Databus's
// Oracle trigger + TXLOG source.
//
// # Guarantees
//
//   - Every committed insert, update and delete of a captured table is
//     emitted once per run, in commit order; rolled-back changes never are.
//   - A window holds whole transactions: all the transactions that
//     committed between two polls, never part of one.
//   - Running again from a position yields the same windows, with the same
//     SCNs and byte-identical events, also after kill -9 of the process:
//     window boundaries are stored in the change log itself.
//   - A value that its column's Avro type cannot hold exactly stops
//     capture with a *ValueError; nothing is dropped or coerced.
//   - Every row is decoded with the schema version its trigger was built
//     for, also after a restart.
//
// # The caller's duties
//
//  1. Call New, then Open; register the tables Open returns (and, after a
//     restart, the older versions that Versions returns).
//  2. Call Run with the position after the last window made durable
//     downstream; call Release with the position of windows no longer
//     needed, and only those (Release deletes them).
//  3. Call Close after Run has returned.
//
// # What Open installs
//
// In one BEGIN IMMEDIATE transaction, in the user's database (switched to
// journal_mode=WAL):
//
//	_databus_changelog(seq INTEGER PRIMARY KEY AUTOINCREMENT, kind, tbl, op, ver, ts, new, old)
//	_databus_sources(id INTEGER PRIMARY KEY, name UNIQUE, version, definition)  current version per table
//	_databus_schemas(id, version, definition)                                   every version ever recorded
//	_databus_state(name, value)                                                 format (1) and released position
//	triggers _databus_<table>_ins, _databus_<table>_upd, _databus_<table>_del  per captured table
//
// A table's logical source is "main.<table>"; its id is assigned once, in
// _databus_sources, and never changes. A trigger is recreated whenever its
// stored SQL differs from what this version of the package would create.
// Triggers of tables removed from the configuration stay (another process
// may still capture them); drop them by hand if nobody does.
//
// Change-log entries, by kind:
//
//	kind 1 row     tbl, op (1 insert, 2 update, 3 delete), ver (the version the trigger was
//	               built for), ts (the statement's time, ns since the Unix epoch, ms resolution),
//	               new (insert, update) and old (update, delete) row images
//	kind 2 marker  ts (time the window was closed, ns); closes a window
//	kind 3 schema  tbl, ver, ts: a new schema version of tbl; the rows of that version follow it
//
// A row image is a JSON array with one element per column of its version,
// which says the SQLite storage class exactly: null; an integer as a JSON
// number (full int64); a real as the string "r" + printf('%!.17g') (which
// round-trips every double); text as "t" + the text (its bytes kept as
// they are, NUL and invalid UTF-8 included); a blob as "b" + hex.
//
// # Windows and SCNs: markers
//
// SQLite has one writer at a time, and AUTOINCREMENT never reuses a
// sequence. So once a transaction that inserted entry b has committed,
// every entry below b is final: any transaction still to commit gets a
// higher sequence. The poller uses that: every PollInterval it reads the
// newest entry; if entries follow the newest marker, it commits a marker
// in a transaction of its own (BEGIN IMMEDIATE; INSERT; COMMIT) and reads
// the entries up to it. Each marker closes one window:
//
//	window SCN       = the marker's seq (Position{SCN: seq})
//	window timestamp = the marker's ts
//	window events    = the entries between the previous marker and this one, in seq order
//
// A marker is never inside a user transaction, so a window holds whole
// transactions. Because markers are stored, Run(from) simply replays the
// entries after from.SCN, grouping them by the markers already there, and
// continues polling: the same windows come out however often, and by
// however many processes, the log is read. After a restart the log may
// hold many markers; each is one window. Changes committed while nothing
// polled (the relay was down) are closed by one marker, and form one
// window however large.
//
// When no row changes for HeartbeatInterval, the poller writes a marker
// anyway: an empty heartbeat window that keeps consumers' positions and
// lag moving. It too is in the log, so replays reproduce it.
//
// # Positions and retention
//
// Run accepts the zero Position (start after what was released), the SCN of
// a window the log holds, or the last released position. Release(pos)
// deletes the entries up to and including pos.SCN (never above) and records
// pos as released; Run from an older position fails with a *PositionError
// (wrapping ErrPosition) rather than silently skipping changes, as do a
// position that is no window's SCN and one beyond the end of the log.
//
// # Schemas
//
// Each captured table's schema.Table comes from PRAGMA table_xinfo. A
// column's Avro type follows SQLite's affinity rules applied to its
// declared type, with BOOL/BOOLEAN recognised first:
//
//	declared type                         affinity  Avro     values accepted (storage class → value)
//	BOOL, BOOLEAN                         NUMERIC   boolean  integer 0 or 1
//	contains INT                          INTEGER   long     integer
//	contains CHAR, CLOB or TEXT           TEXT      string   text
//	contains BLOB, or none; ANY if STRICT BLOB      bytes    blob
//	contains REAL, FLOA or DOUB           REAL      double   real; integer when exactly representable
//	anything else (NUMERIC, DECIMAL(p,s), NUMERIC   string   text as is; integer in decimal; real as the
//	DATE, DATETIME, ANY if not STRICT)                       shortest decimal that round-trips (strconv 'g')
//
// NUMERIC maps to string because SQLite holds such values as integer, real
// or text, and only a string carries all three exactly. Any other pairing
// (text 'abc' in an INTEGER column of a table that is not STRICT, an
// integer in an untyped column, 2 in a BOOLEAN column, ...) stops Run with
// a *ValueError naming the table, column and change-log seq. STRICT tables
// with concrete column types make that impossible and are recommended.
//
// A column is nullable unless declared NOT NULL; the rowid alias (a
// single INTEGER PRIMARY KEY column) and the key columns of a WITHOUT ROWID
// table are never null. SourceType is the declared type.
//
// Key rule: the key is the primary key columns in primary-key order. A
// table without a primary key is keyed by its rowid, exposed as an extra
// leading column "_rowid" (Avro long, SourceType ROWID, never null); such a
// table must not have a column named _rowid. Key components are encoded
// with the event key encoding: long and boolean with AppendKeyInt, string
// with AppendKeyString, bytes with AppendKeyBytes, double as its canonical
// string, NULL with AppendKeyNull.
//
// Versions: a table's version is bumped whenever its columns, their types
// or nullability, or its key change. Open checks this, and so does Run
// whenever PRAGMA schema_version moves (that is, after any DDL); the new
// version's definition, its schema entry in the change log and its
// triggers (which write the new version number) are committed together.
// The schema entry becomes a schema-change event (event.NewSchemaChange,
// with the Avro schema of Table.AvroSchema) in the window that holds it,
// before the first row of that version. Every version stays recorded in
// _databus_schemas, so older entries still decode after a restart;
// Versions returns them all.
//
// # Events
//
// A row entry becomes an event.Event of kind data: SCN of its window, the
// trigger's timestamp, the table's id, the entry's schema version, the op,
// the key, the Avro binary of the new row as payload (insert, update) and
// of the old row as before-image with HasBefore (update, delete). Rows are
// records keyed by schema.FieldName of each column, encoded exactly as
// schema.Codec would (the source writes the bytes directly, for speed). An
// update that changes the key is emitted as a delete of the old key
// followed by an insert of the new one, so that consumers who materialise
// rows by key stay correct.
//
// # Concurrency
//
// Run is called by one goroutine at a time; Release may run concurrently
// with it; Versions at any time. The source holds two connection pools:
// reads, and writes (one connection, every transaction BEGIN IMMEDIATE with
// a busy timeout of 5 s). A marker that cannot get the write lock in time
// is retried at the next poll.
//
// # Limitations
//
//   - Windows after downtime: see above; a window's events are in memory.
//   - DDL on a captured table: rows written after the DDL committed and
//     before the source reinstalled the triggers (at most one poll while
//     Run runs; until the next Open otherwise) are recorded, and decoded,
//     with the previous version: a column added in between is absent from
//     them. Quiesce writers of the table around DDL to avoid this.
//   - ALTER TABLE DROP COLUMN of a captured column fails while the
//     triggers reference it: drop the three _databus_<table>_* triggers in
//     the same transaction; changes committed before they are reinstalled
//     are not captured, so quiesce writers first.
//   - REPLACE conflict resolution deletes conflicting rows without firing
//     delete triggers unless the writing connection set
//     PRAGMA recursive_triggers=ON. A row replaced under the same key is
//     seen as an insert of that key (which materialises correctly); a row
//     removed because of another UNIQUE constraint is missed.
//   - VACUUM may renumber the rowids of tables without an INTEGER PRIMARY
//     KEY, which changes the keys of tables keyed by _rowid without any
//     trigger firing. Give such tables a primary key, or never VACUUM them.
//   - Text is passed through byte for byte; text that is not valid UTF-8
//     becomes an Avro string that is not either.
//   - SQLite itself stores -0.0 in a REAL column as 0.0; that is what is
//     captured. Timestamps have SQLite's millisecond resolution.
//   - The triggers run in the writers' SQLite library, which must have the
//     built-in JSON functions (SQLite 3.38 or later, or JSON1 compiled in);
//     without them, writes to captured tables fail loudly.
//   - Every captured change costs the writer one more row insert, with
//     the row images, in its own transaction.
package sqlite
