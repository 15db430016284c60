// Package postgres captures committed changes from a PostgreSQL database
// through logical replication with the built-in pgoutput plugin, and
// implements [source.Source].
//
// The adapter streams a permanent logical replication slot (pglogrepl over
// a replication=database connection), decodes pgoutput's messages with the
// table definitions the stream itself carries (relation messages), and
// hands the relay one window per committed transaction.
//
// # Server requirements
//
// Open refuses, with a [*SettingError] naming what to change:
//
//	wal_level              logical     (postgresql.conf, restart)
//	max_replication_slots  >= 1        (one slot per relay)
//	max_wal_senders        >= 1
//	role                   REPLICATION (ALTER ROLE ... WITH REPLICATION) or superuser
//	PostgreSQL             10 or later; 14 or later for streaming and heartbeats
//
// for example "databus: postgres wal_level is replica; set wal_level=logical
// in postgresql.conf and restart". Every configured table must exist and be
// an ordinary table. The publication (Config.Publication, default
// "databus") must publish insert, update, delete and truncate, cover every
// configured table (or be FOR ALL TABLES) and have no row filter or column
// list on them; Open creates it (CREATE PUBLICATION ... FOR TABLE, which
// needs ownership of the tables and CREATE on the database) or adds missing
// tables when Config.CreatePublication allows (the default); the seed's
// watermark tables that exist are included (see "Seeding"). The slot
// (Config.Slot, default "databus"; slots are cluster-wide, so give each
// relay its own) must be a pgoutput slot of the same database that has not
// lost WAL; Open creates it with pg_create_logical_replication_slot when
// absent and Config.CreateSlot allows (the default). A role WITH
// REPLICATION LOGIN that owns the tables needs nothing else: heartbeats
// (pg_logical_emit_message) are allowed to it.
//
// # Positions and SCNs
//
// A window's SCN is its transaction's commit end LSN (the end of the commit
// record), so SCNs follow the WAL, are the same for every relay reading the
// database, and strictly increase. [source.Position] carries only the SCN.
// Run(from) starts the slot at from.SCN and skips every transaction ending
// at or before it (the server re-sends from the slot's restart point); the
// zero Position starts at the slot's confirmed_flush_lsn. Window.TxID is
// the transaction id (xid) in decimal, Window.Timestamp the commit time.
//
// # Durability by retention
//
// The slot keeps the server from removing WAL the relay may still need: the
// adapter confirms (the flush and apply positions of its standby status
// updates) only what the relay released, never further, so after a relay
// crash the slot still holds every window after the last release and
// Run(from = that position) yields the same windows with the same SCNs
// (same events, same schema versions, same schema-change events; heartbeat
// windows are WAL records too and come back identical). Release records
// the position and wakes the capture loop, which confirms it at once; a
// status update also goes out every Config.StatusInterval and whenever the
// server asks (keepalive with reply requested). The write position
// reported is what the adapter received, which the server only uses for
// monitoring.
//
// A consequence: the server's WAL grows with the relay's buffer (see
// Stats.SlotLagBytes). Another: a server shutting down waits for its
// walsenders' clients to confirm everything sent, which the adapter will
// not do for unreleased windows. It recognises the server's rapid repeated
// requests for a reply, disconnects (the shutdown proceeds at once), and
// reconnects with backoff once the server is back.
//
// Run checks the slot before every session. A slot that no longer exists,
// that was invalidated (wal_status lost: WAL it needed was removed, see
// max_slot_wal_keep_size), or whose confirmed_flush_lsn is beyond the resume
// position (recreated, or consumed by another client) ends Run with a
// [*SlotLostError] that says so and how to recover: recreate the slot,
// re-seed the consumers from a bootstrap snapshot and restart capture with
// an empty relay state.
//
// # Windows and events
//
// One window per committed transaction that changed a captured table,
// events in the transaction's order. Transactions without captured changes
// produce nothing. Every data event carries a key and images encoded with
// the schema version it names:
//
//	INSERT  OpInsert, Payload = the new row
//	UPDATE  OpUpdate, Payload = the new row; Before = the old row with
//	        REPLICA IDENTITY FULL, none otherwise
//	DELETE  OpDelete, Before = the old row with REPLICA IDENTITY FULL;
//	        otherwise the key columns only, every other column null
//
// An UPDATE that changes the row's key becomes an OpDelete of the old key
// (Before as for a DELETE) followed by an OpInsert of the new one, so that
// consumers keyed by the key stay right.
//
// TRUNCATE of captured tables becomes, in its transaction's window, one
// schema-change frame per table: the event.SchemaChange of the version in
// force plus "ddl":"truncate","truncate":true (and "cascade",
// "restartIdentity" as the statement had them), the MySQL adapter's layout.
// A consumer must drop every row it holds for that source: the log carries
// no row events for a TRUNCATE. The publication must publish truncate (Open
// checks), so consumers are never left with stale rows silently.
//
// # Heartbeats
//
// When no window was emitted for Config.HeartbeatInterval (default 1s), the
// adapter runs pg_logical_emit_message(false, 'databus', 'heartbeat <µs>')
// on a normal connection (with txid_current() before PostgreSQL 17, so that
// a commit flushes the message to the stream at once). pgoutput delivers
// the message (messages 'true') with its LSN; every non-transactional
// message with prefix "databus" becomes an empty window with SCN = that LSN
// and the timestamp written in it. Messages and commits arrive in LSN order,
// so the SCN is above the previous window's. Heartbeats of other relays on
// the same database become windows too, identically for every reader.
// Heartbeats need protocol version 2 (PostgreSQL 14): with version 1 an
// idle database yields no windows.
//
// # Keys
//
// The key is the replica identity: the primary key (REPLICA IDENTITY
// DEFAULT, and FULL, for which the adapter looks the primary key up in the
// catalog), or the identity index's columns (USING INDEX); a table with
// neither (or REPLICA IDENTITY NOTHING) uses the whole row, every column in
// order. Key columns are in column order, not index order. Components:
// smallint, integer, bigint, oid and domains over them with
// event.AppendKeyInt; bytea with AppendKeyBytes; every other type with
// AppendKeyString of the server's text form (text as is; numeric, floats,
// dates, uuid... canonical text); NULL with AppendKeyNull.
//
// # Schemas from the log
//
// Rows are decoded with the definition carried by the relation message
// before them, never with today's catalog. A relation message does not say
// whether a column is NOT NULL, so every column is nullable ("null" first
// in its union). Each distinct definition of a table (column names, types
// with their modifiers as format_type renders them, key) is a schema
// version of its logical source "schema.table". Ids (by name) and versions
// (by definition) are assigned in order of discovery and persisted in
// <StateDir>/postgres-schemas.json (format 1, written atomically with
// fsync), together with the relation definitions seen (so that a re-read
// never needs the catalog) and the commits at which each table's rows
// switched version. Open returns every table's current definition from the
// catalog, with the id and version the stream gives the same definition.
//
// pgoutput carries no DDL. A new definition (ALTER TABLE ADD/DROP/ALTER
// COLUMN TYPE, a new replica identity) is announced by a schema-change
// event (event.NewSchemaChange with Table.AvroSchema) right before the
// first row that uses it, in that row's window; where those events fall is
// decided by the persisted transitions, so a re-read puts them in the same
// windows. A definition change without rows after it is not announced;
// DROP TABLE and RENAME produce nothing (a renamed table is no longer the
// configured name and stops being captured).
//
// # TOAST
//
// PostgreSQL does not log the value of a TOASTed column an UPDATE left
// unchanged (pgoutput sends it as 'u'). The adapter never turns that into a
// silent null. Every table's schema ends with the column UnchangedColumn
// ("_databus_unchanged", an Avro array of strings): the Avro field names of
// the columns the image does not carry. Those columns are null in the
// image; a consumer keeps its previous value for them (from its own copy
// of the row, or the bootstrap store's), i.e. it applies such an update as
// a partial update. With REPLICA IDENTITY FULL the old row is logged whole,
// so the adapter fills the values from it and the list stays empty. The
// list is empty for deletes and before-images. One case lists columns on an
// insert: an UPDATE that changes the key (emitted as a delete of the old key
// and an insert of the new one) with an unchanged TOASTed column. The value
// then lives under the old key, in the consumer's copy of the row the
// delete just before it removes: take it from there.
//
// # Types
//
// Values are decoded from pgoutput's text format; the replication session
// sets DateStyle=ISO, IntervalStyle=iso_8601, TimeZone=UTC,
// bytea_output=hex and extra_float_digits=3 so that the text is canonical.
// Every column is the union ["null", T]:
//
//	PostgreSQL type               Avro type T                               value
//	smallint, integer             int
//	bigint                        long
//	oid, xid, cid                 long
//	numeric, numeric(p,s)         string                                    the exact text: "12.30", "NaN",
//	                                                                        "Infinity", "-Infinity"
//	real                          float                                     NaN and ±Infinity included
//	double precision              double                                    NaN and ±Infinity included
//	boolean                       boolean
//	text, varchar(n), char(n),    string                                    char(n) keeps its padding
//	  name, "char"
//	bytea                         bytes
//	date                          int, date                                 days since 1970-01-01;
//	                                                                        infinity = 2147483647,
//	                                                                        -infinity = -2147483648
//	time(p)                       long, time-micros                         24:00:00 is 86400000000
//	timetz                        string                                    "13:45:56+02"
//	timestamp(p)                  long, local-timestamp-micros              wall clock, no zone
//	timestamptz(p)                long, timestamp-micros                    UTC
//	                                                                        (both: infinity = max int64,
//	                                                                        -infinity = min int64; the few
//	                                                                        values after 294247-01-10 also
//	                                                                        saturate to max int64)
//	interval                      string                                    ISO 8601: "P1Y2M3DT4H5M6.5S"
//	uuid                          string, uuid
//	json, jsonb                   string                                    the JSON text (jsonb normalised
//	                                                                        by the server)
//	enum types                    string                                    the label
//	domains                       the base type's
//	inet, cidr, macaddr           string                                    the server's text
//	arrays of the above           array of ["null", T]                      multi-dimensional arrays are
//	                                                                        flattened in row-major order;
//	                                                                        lower bounds are dropped
//	anything else (money, point,  string                                    the server's text (money's
//	  tsvector, bit, xml, ranges,                                           depends on lc_monetary)
//	  composite types, ...)
//
// The field's doc is format_type's rendering (for example "numeric(10,2)",
// "character varying(10)", "mood[]"), part of the version's identity.
//
// # Large transactions and memory
//
// The adapter never holds a whole transaction: however large, it passes
// through bounded memory and reaches the relay as one window, delivered in
// chunks (source.Window.Partial, see "Large transactions" in package
// source) that the relay spools and reassembles.
//
// Plain transactions (all of them with protocol version 1; with version 2
// those the server did not stream) arrive whole and contiguous: Begin,
// changes, Commit, sent once the server decoded the commit. Whenever the
// events read since the transaction's start or its last chunk take
// Config.ChunkBytes (default 8 MiB: keys and Avro images, plus 128 bytes an
// event) or number Config.ChunkEvents (default 10000), they are emitted as
// a chunk and their memory is reused. The check runs before each change is
// added, so a chunk ends after a whole change (the delete and insert of a
// key change stay together) and the final window, emitted at Commit with
// SCN = commit end LSN, is never empty. Schema-change events are placed
// chunk by chunk with the commit LSN the Begin message already carries
// (final_lsn), exactly where a whole read puts them.
//
// Streamed transactions (version 2, PostgreSQL 14+: the adapter asks for
// streaming 'on', so a transaction whose decoded changes exceed the
// server's logical_decoding_work_mem, 64MB by default, is sent in blocks
// while in progress instead of being spilled by the server) cannot be
// chunked as they arrive: their blocks interleave with other transactions'
// commits, and only their Stream Commit places them in commit order. Each
// one's decoded events go, as they arrive, to a file of its own in
// <StateDir>/postgres-spill (format in spill.go: a version byte, then
// per change its subtransaction id and an event frame with checksums),
// through one 64 KiB write buffer shared by all files and flushed at each
// Stream Stop. A subtransaction's Stream Abort (ROLLBACK TO SAVEPOINT after
// its rows were streamed) adds its id to the file's aborted set, whose
// records are skipped (past 16384 ids the file is rewritten without them);
// the transaction's Stream Abort deletes the file. At Stream Commit the
// file is read back in order through a 64 KiB buffer and emitted as chunks
// (the same bounds) and a final window, or as one window when it fits in
// one chunk; then it is deleted. Nothing else is read from the server
// meanwhile, so windows stay in commit order.
//
// Windows, SCNs, events and schema-change events do not depend on the
// path, the chunk bounds or where a session started: a restart yields the
// same windows (only chunk boundaries may differ, which the relay does not
// see). A session that fails after chunks of a plain transaction were
// emitted abandons them (a chunk with Abandon set) before the next session
// sends the transaction again; Run returning abandons them implicitly.
// Spill files of a failed session are deleted (the server streams the open
// transactions again from their start), Run deletes its files when it
// returns, Open empties the directory (files of a crashed process) and
// Close removes it. Spill I/O errors end the session (retryable: the disk
// may have room again).
//
// Memory bound, whatever the transactions' sizes: the pending events of
// one chunk, at most about ChunkBytes, or ChunkEvents x (128 bytes + the
// mean row's key and images) when that is smaller; one 64 KiB write buffer;
// during a Stream Commit one 64 KiB read buffer; the largest single row a
// few times over (its pgoutput message, its image, its spill record); and
// per open streamed transaction a few hundred bytes, its relation
// definitions and up to 16384 aborted subtransaction ids. With the
// defaults that is about 10 MiB plus the Go collector's slack (GOGC):
// TestLargeTransactionMemory measures a heap peak of +8 to +9 MiB while a
// 200,000-row transaction of 67 MiB of events passes, streamed or plain.
// Disk: the open streamed transactions' keys and images plus 56 bytes a
// change (Stats.SpilledBytes). Stats.HeldBytes reports the pending events
// in memory. A single row larger than event.MaxFrameSize (256 MiB) cannot
// be delivered: it stops capture with an ErrDecode error.
//
// While the adapter replays a committed streamed transaction, or while
// emit blocks, it answers no keepalive: see below.
//
// # Reconnection and errors
//
// Run reconnects after connection failures, server restarts and crashes,
// with capped exponential backoff between Config.MinBackoff and
// MaxBackoff, always resuming after the last window emitted, so no window
// is repeated or lost. It returns, without retrying: emit's error; ctx's
// error; a [*SlotLostError]; a [*SettingError]; errors wrapping
// [ErrDecode] (content the adapter cannot decode faithfully); schema
// history errors; and the server's refusals (authentication, permission,
// missing publication). The decision is in one function, retryable. While
// emit blocks the adapter answers no keepalive: if it blocks longer than
// the server's wal_sender_timeout (60s by default), the server drops the
// connection and the adapter reconnects.
//
// Stats reports the released LSN, the slot's confirmed_flush_lsn and the
// server's WAL position (refreshed every heartbeat interval), the slot lag
// in bytes, wal_status, the newest SCN, heartbeat age, reconnections,
// chunks emitted and the open transactions with their bytes in memory and
// on disk.
//
// # Metrics
//
// *Source implements prometheus.Collector, which the relay registers with
// its own metrics: databus_source_postgres_slot_lag_bytes, confirmed_lsn,
// released_lsn, server_wal_lsn, last_scn, slot_wal_status{status},
// heartbeat_age_seconds, streaming, reconnects_total, chunks_total,
// open_transactions, open_transaction_bytes and
// open_transaction_spilled_bytes, each labelled with the slot (see
// metrics.go). Collect reads Stats and never touches the server.
//
// # Seeding
//
// [ChunkReader] (NewChunkReader, from the same Config) implements
// [source.ChunkReader]: it copies the rows a table already holds, for the
// bootstrap seed, on a connection of its own (never the slot), with the
// session settings of the replication connection.
//
// ReadChunk pages through a table by its key index: the primary key, or the
// replica identity index (the capture's key). Each chunk is one statement,
//
//	SELECT <columns> FROM <table> WHERE (k1, k2) > ($1, $2) ORDER BY k1, k2 LIMIT $3
//
// with the key index's columns in the index's order, which a btree index
// serves as an index condition (an index scan that starts where the last
// chunk ended; an index with another collation or operator class than the
// columns' defaults cannot, and each chunk then scans the table). The
// values are fetched in text format and go through the capture's own
// conversion (the schema version's Avro types decide it, as for a relation
// message), so that a row's Key and Payload are byte for byte those of the
// insert event the capture produces for the same row; a SELECT returns
// TOASTed values whole, as an insert carries them. The cursor is JSON: the
// key index's column names and the last row's values of those columns in
// their text form, passed back as parameters typed as the columns, so it
// round-trips every value exactly; anything else fails with
// [ErrBadCursor]. Tables whose key is the whole row (no primary key,
// REPLICA IDENTITY NOTHING or FULL without a primary key) fail with
// [ErrNotSeedable]: without a unique key, pages cannot be told apart.
//
// The statement runs in a read-only transaction that, before it commits,
// compares the table's definition in the catalog with the one the schema
// version was checked against (columns, their types and modifiers, order,
// replica identity, key index). The SELECT's lock on the table keeps every
// DDL that could change those (all take ACCESS EXCLUSIVE) from committing
// until then, so the rows are of the version asked for; a difference found
// there or when the version is first checked against the table is an
// error wrapping [source.ErrSchemaMismatch] that names it.
//
// PostgreSQL makes transactions visible in an order that may differ from
// the order of their commit records in the WAL: a transaction whose commit
// record precedes the low watermark's can still be invisible to a snapshot
// taken after the watermark committed, for a moment. The seed would then
// read a row version older than one the stream delivered before the low
// watermark, and apply it over that change. So ReadChunk first takes a
// transaction id (committed at once, without a WAL flush) and waits until
// the oldest transaction in progress is younger: every transaction that
// committed before the call is then visible to the chunk's SELECT. The
// wait lasts as long as the writing transactions already open (cluster
// wide, prepared ones included), like CREATE INDEX CONCURRENTLY's; ctx
// bounds it and its error names the oldest transaction id in the way.
//
// Watermarks go to the table <schema>._databus_watermark (slot text
// PRIMARY KEY, mark text NOT NULL) of the seeded table's schema. The
// capture delivers the changes of the watermark table of every schema of
// Config.Tables as data events of their own logical sources (ids and
// versions assigned as for any table), provided the publication publishes
// it: Open includes the ones that exist when it creates the publication or
// adds missing tables, and returns their schemas with the configured
// tables'; WriteWatermark creates the table when missing and adds it to
// the publication unless that is FOR ALL TABLES (or says which statement to
// run when Config.CreatePublication is false). The upsert is a
// transaction of its own, committed before WriteWatermark returns.
//
// EstimateRows counts the rows of a table of up to 8 MiB and estimates
// those of larger ones: the planner's estimate, or, for a table never
// analyzed, the rows of a sample of about 128 pages scaled to its size.
//
// # Concurrency
//
// Open, Run and Close are called by one goroutine at a time; Release,
// Stats, Describe and Collect may run concurrently with Run (and with each
// other). Run owns the replication connection
// and a catalog connection (on its own goroutine) and one goroutine with
// the heartbeat connection, and waits for that goroutine before it returns.
// A ChunkReader is used by one goroutine at a time (Close excepted) and has
// no goroutine of its own.
//
// # Limitations
//
//   - Streamed transactions take disk space in StateDir until they commit
//     (about the size of their rows); the files are not encrypted.
//   - Partitioned tables are refused (capture their partitions, or wait for
//     publish_via_partition_root support).
//   - Multi-dimensional arrays lose their shape (flattened); arrays of
//     types with another delimiter than ',' (box) are strings.
//   - DROP TABLE, RENAME and definition changes without a later row are not
//     signalled.
//   - Ids and versions are per state directory: two relays capturing the
//     same database agree on SCNs, not necessarily on schema ids and
//     versions.
//   - Only the text format is decoded (no binary 'true' option), and only
//     tested on PostgreSQL 15.
//   - A seed chunk waits for the writing transactions open when it starts
//     (see "Seeding"): a long one, or a forgotten prepared transaction,
//     stalls the seed. Tables without a unique key cannot be seeded.
package postgres
