// Package mysql captures committed changes from a MariaDB (10.5+) or MySQL
// (8.0.1+) server's binary log and implements [source.Source].
//
// The adapter connects as a replica (go-mysql's replication package, with
// its own reconnection), decodes row events with the table definitions the
// log itself carries, and hands the relay one window per committed
// transaction.
//
// # Server requirements
//
// Open refuses a server, with a [*SettingError] that names the setting and
// the value to set, unless:
//
//	log_bin             ON    (start the server with --log-bin)
//	binlog_format       ROW
//	binlog_row_image    FULL
//	binlog_row_metadata FULL  (column names, signedness, charsets, ENUM/SET labels, primary key)
//
// and Config.ServerID differs from the server's server_id. Sessions opened
// before binlog_format was changed keep their old format until they
// reconnect; the adapter cannot see that. The capture account needs SELECT
// (the catalog read at Open), REPLICATION SLAVE (the stream) and BINLOG
// MONITOR on MariaDB (REPLICATION CLIENT on MySQL) for SHOW MASTER STATUS
// and SHOW BINARY LOGS.
//
// # Positions and SCNs
//
// A window's SCN is (binlog file number << 32) | end offset of its commit
// event (the XID event, the COMMIT query of non-transactional engines, the
// statement itself for DDL). The number is the file name's numeric suffix
// (binlog.000042 is 42). SCNs therefore follow the log, are the same for
// every relay reading the same server, and strictly increase.
//
// [source.Position].Data is JSON: {"file":"binlog.000042","pos":1234,
// "gtid":"0-1-99"}, the coordinates just after the window. A run resumes
// there with a position-based binlog dump. A Position with an SCN but no
// data resumes at the file the SCN's high half numbers (named like the
// server's current file) and the offset in its low half.
//
// The zero Position does not mean "the oldest change": on a big server the
// oldest binlog can be weeks old. It starts at the end of the binlog as of
// Open (SHOW MASTER STATUS), which is what a new relay wants: everything
// committed after Open returned is captured; set
// Config.StartAt to "oldest" for the start of the oldest binlog file. A run
// from the zero Position first emits an empty window at its start position,
// so the relay holds a concrete position before any transaction arrives.
//
// # Windows
//
// One window per source transaction touching a captured table, in log
// order; inside it, events in the log's order across tables. Window.TxID is
// the GTID (MariaDB domain-server-seq; MySQL uuid:seq, empty for anonymous
// transactions). Window.Timestamp is the commit event's timestamp (binlog
// timestamps have one-second resolution). Every data event carries a key and
// images encoded with the schema version it names:
//
//	INSERT  OpInsert, Payload = the new row
//	UPDATE  OpUpdate, Payload = the after image, Before = the before image
//	DELETE  OpDelete, Before = the old row (no payload)
//
// An UPDATE that changes a row's key becomes an OpDelete of the old key
// followed by an OpInsert of the new one, so that consumers keyed by the
// key stay right.
//
// A large transaction is not held whole: once the events read since its
// start (or since its last chunk) take Config.ChunkBytes (default 8 MiB,
// counting keys, row images and about 128 bytes an event) or number
// Config.ChunkEvents (default 10000), they are emitted as a chunk
// (source.Window.Partial) and their memory is reused; the
// commit emits the final chunk with the SCN, GTID and position. Chunks end
// after whole rows events, so a schema-change event always precedes, in the
// same or an earlier chunk, the rows that use its version. The relay
// concatenates the chunks into one window, identical to the one an
// unchunked read yields. A transaction whose chunks were emitted but whose
// commit is not delivered (it is logged with ROLLBACK, a new transaction
// starts without its commit, or the stream reconnects inside it) is
// abandoned with a chunk that has Abandon set; after a reconnection it is
// read again from its start. The adapter's memory is thus bounded by the
// chunk bounds plus its read-ahead of binlog events, whatever the
// transaction's size.
//
// Transactions that touch no captured table produce no events; the adapter
// emits an empty (heartbeat) window for one of them at most once per
// Config.HeartbeatInterval, measured by the commit timestamps in the log.
// When the server is idle it sends a heartbeat with its binlog position
// every HeartbeatInterval; if that position is past the last window (the
// transactions skipped since), the adapter emits an empty window there. An
// empty window always has an SCN above the previous window's, so a fully
// idle server produces no new SCN at all unless Config.HeartbeatTable is
// set: the adapter then writes one row of that table every interval (like
// Debezium's heartbeat action query), which moves the binlog position.
//
// Determinism: data windows, their SCNs, their events and the schema-change
// events among them are a function of the log and of the persisted schema
// history, so running from the same position again yields the same windows
// byte for byte (what the relay relies on after a crash). One exception: a
// schema-change event can be repeated in a later read when the history was
// first discovered out of log order (a run that started further back in the
// log than an earlier run with the same state directory); a repeated
// announcement of a known version is harmless. Empty windows are not
// deterministic: which skipped transactions get one depends on where the run started
// and on when the server was idle. They carry no events, and a consumer's
// checkpoint at one of them still resumes correctly (the relay serves the
// windows with a greater SCN).
//
// # Keys
//
// The key is the primary key, in key order, from the table map's metadata;
// MariaDB and MySQL promote the first UNIQUE index over NOT NULL columns to
// primary key when there is none, and so does the adapter. A table without
// either uses the whole row, every column in order, as its key: the key is
// deterministic, an UPDATE of such a table is a delete and an insert, and
// identical duplicate rows share one key (a consumer keyed by it keeps one
// of them). Key components: integers and YEAR with event.AppendKeyInt
// (signed) or event.AppendKeyUint (unsigned); text, ENUM and JSON with
// AppendKeyString; BINARY/VARBINARY/BLOB, BIT and GEOMETRY with
// AppendKeyBytes; DECIMAL and the temporal types with AppendKeyString of
// their text as go-mysql's binlog decoder renders it (the server's
// rendering, with TIMESTAMP in UTC, except that a TIME drops a fractional
// part that is zero: '12:00:00', not '12:00:00.00'); FLOAT/DOUBLE with
// AppendKeyString of Go's shortest exact rendering (strconv 'g', -1); SET
// with AppendKeyString of its comma-separated labels; NULL with
// AppendKeyNull. A key column with a prefix index (PRIMARY KEY (c(10))) is
// keyed by its whole value.
//
// # Schemas from the log
//
// Events are always decoded with the definition carried by the table-map
// event before them in the log, never with today's catalog. Each distinct
// definition of a table (column names, types and their parameters,
// nullability, signedness, character set, ENUM/SET labels, geometry type,
// key) is a schema version of its logical source "db.table". Logical
// source ids (by name) and versions (by definition) are assigned in order
// of discovery and persisted in <StateDir>/mysql-schemas.json (format 1,
// written atomically with fsync) so that re-reading the log after a restart
// maps the same name to the same id and the same definition to the same
// version. Open reads the catalog (information_schema) of every captured
// table and returns it, with the same id and version the log's definition
// gets (both sources are normalised to one description); the relay
// registers these.
//
// A window whose rows use a version of a table other than the one the
// table's previous rows used carries a schema-change event
// (event.NewSchemaChange, with Table.AvroSchema) before the first data event
// that uses it. Where those events fall is recorded in the history file too
// ("transitions", keyed by the transaction's log position), which is what
// makes them fall in the same windows when the log is read again.
//
// # DDL
//
// A DDL statement on a captured table (CREATE/ALTER/RENAME/TRUNCATE/DROP
// TABLE, CREATE/DROP INDEX, DROP DATABASE) gets a window of its own, with a
// schema-change frame for each captured table it affects whose definition
// is known from the history. The frame's payload is an event.SchemaChange of
// the version in force before the statement, plus fields that
// event.SchemaChange readers ignore:
//
//	statement      frame payload adds                  consumer's duty
//	ALTER TABLE t  "ddl":"alter"                       none; the new definition is announced
//	                                                   with the first row that uses it
//	TRUNCATE t     "ddl":"truncate","truncate":true    delete every row of t: the log has no
//	                                                   row events for a TRUNCATE
//	DROP TABLE t   "ddl":"drop","drop":true            t's rows are gone
//	RENAME a TO b  "ddl":"rename","renamedTo":"db.b"   for a; and for b (if captured) a normal
//	               "renamedFrom":"db.a"                schema change of b's version (a's last
//	                                                   definition under the new name)
//	CREATE TABLE t (nothing)                           the definition is not in the log until the
//	                                                   first row, whose schema change announces it
//
// ALTER TABLE ... RENAME TO counts as an alter and a rename. The statement
// text is recognised by a small tokenizer (comments, quoted identifiers and
// executable comments handled); statements it does not recognise are not
// DDL to it.
//
// # Types
//
// Every column is an Avro record field named schema.FieldName(column); a
// nullable column is the union ["null", T]. DATE, DATETIME and TIMESTAMP
// are always nullable in Avro: zero and partial dates ('0000-00-00',
// '2024-00-15', allowed by some sql_modes) have no Avro value and are sent
// as null.
//
//	MariaDB/MySQL type             Avro type                                    value
//	TINYINT, SMALLINT, MEDIUMINT   int                                          signed or unsigned alike
//	INT                            int
//	INT UNSIGNED                   long
//	BIGINT                         long
//	BIGINT UNSIGNED                bytes, decimal(20,0)                         exact up to 18446744073709551615
//	DECIMAL(p,s)                   bytes, decimal(p,s)                          exact (up to 65 digits)
//	FLOAT                          float
//	DOUBLE                         double
//	BIT(n)                         bytes                                        big-endian, (n+7)/8 bytes
//	YEAR                           int                                          0 for 0000
//	DATE                           int, date                                    days since 1970-01-01
//	TIME(f)                        long                                         signed microseconds (±838:59:59.999999)
//	DATETIME(f)                    long, local-timestamp-micros                 wall clock, no time zone
//	TIMESTAMP(f)                   long, timestamp-micros                       UTC
//	CHAR, VARCHAR, *TEXT           string                                       utf8mb3/utf8mb4/ascii as is; latin1
//	                                                                            (Windows-1252) converted to UTF-8
//	  in another character set     bytes                                        the raw bytes in that character set
//	BINARY(n)                      bytes                                        padded with zero bytes to n
//	VARBINARY, *BLOB               bytes                                        up to the event size limit
//	JSON                           string                                       MySQL's binary JSON as JSON text;
//	                                                                            MariaDB's JSON is LONGTEXT
//	ENUM                           string                                       the label ("" for the invalid value 0)
//	SET                            array of string                              the labels, in definition order
//	GEOMETRY and subtypes          bytes                                        the server's internal form: a 4-byte
//	                                                                            little-endian SRID, then WKB (drop the
//	                                                                            first 4 bytes for plain WKB)
//	UUID, INET6, INET4 (MariaDB)   bytes                                        their 16/16/4-byte binary form
//	                                                                            (the log does not mark the type)
//
// The field's doc is the source type (for example "varchar(20) utf8mb4",
// "decimal(12,2)", "enum('a','b')"), which is part of the version's identity.
//
// # Reconnection and errors
//
// Run reconnects on connection errors, server restarts and stalls (no event
// nor heartbeat for 3 heartbeat intervals + 10 s), with capped exponential
// backoff between Config.MinBackoff and MaxBackoff, always resuming at the
// last emitted window's position, so no window is repeated or lost. It
// returns, without retrying: emit's error; ctx's error; a [*SettingError]
// (for example a table map without column names, written while
// binlog_row_metadata was not FULL); a [*BinlogPurgedError] when the binlog
// file to resume from is gone (re-seed the consumers from a bootstrap
// snapshot, restart capture from the current position, and raise
// binlog_expire_logs_seconds / expire_logs_days); [ErrPositionBackwards]
// (RESET MASTER); errors wrapping [ErrDecode]; and access-denied errors.
// The decision is in one function, retryable.
//
// Release only records the position: the server purges binlogs by its own
// retention, which a replica cannot hold back, so there is nothing to
// confirm. Keep the server's binlog retention longer than any relay outage.
//
// # Seeding
//
// [ChunkReader] (NewChunkReader, from the same Config) implements
// [source.ChunkReader]: it copies the rows a table already holds for a
// bootstrap seed, and writes the seed's watermarks.
//
// A chunk is one autocommit statement, so it reads one consistent InnoDB
// snapshot and takes no lock, and no transaction spans chunks:
//
//	SELECT cols FROM db.t FORCE INDEX (key) WHERE (k1 > ?) OR (k1 = ? AND k2 > ?) ... ORDER BY k1, k2 ... LIMIT n
//
// MariaDB turns that predicate into a range scan of the key index that
// starts at the cursor (it does not for the row comparison (k1, k2) > (?, ?),
// which scans from the first row), so a chunk costs its own rows whatever
// its position. Cursor values of text key columns are compared as
// CONVERT(? USING charset) COLLATE collation, the column's own: the order
// is the index's, and the predicate stays sargable. A key with a prefix
// index (a TEXT key) is sorted on every chunk: correct, slow on big tables.
// Rows that exist from the first chunk to the last are read exactly once,
// in key order, whatever is inserted or deleted meanwhile.
//
// A row is returned as the event the capture emits for its insert, Key and
// Payload byte for byte: the reader selects with the binary protocol (exact
// FLOAT and DOUBLE), in raw bytes (character_set_results=binary, so text
// arrives in its column's character set, as in the binlog), ENUM and SET as
// their index and bit set (e+0), UUID, INET6 and INET4 as their binary form;
// it turns the values into those go-mysql's binlog decoder gives (DECIMAL
// with exactly its scale, TIME without a zero fraction, TIMESTAMP in UTC)
// and encodes them with the capture's own code.
//
// The cursor is JSON, one entry per key column with its value in an exact
// form (integers as text, FLOAT/DOUBLE as their bits, text and binary as
// base64 of the raw bytes, with the collation of text columns); a cursor
// that is not one the reader made for the table's key fails with
// [ErrBadCursor], and so does one made under another collation of a text
// key column (the order changed: the seed must start again).
//
// The live definition (information_schema) is compared with the schema
// version asked for before the first chunk of the version and after every
// chunk's statement; a difference fails with an error wrapping
// [source.ErrSchemaMismatch] that names it. The check after the statement
// sees every DDL committed before the statement, so the rows returned are
// the version's, unless two DDLs changed the table and changed it back
// between two checks. Tables without a primary key (or a UNIQUE index over
// NOT NULL columns), and MySQL's binary JSON and VECTOR columns, fail with
// [ErrNotSeedable].
//
// WriteWatermark upserts (slot, mark) into db._databus_watermark (created
// if missing) in one autocommit statement. The capture always captures that
// table in every database Config.Include can match, so the mark reaches the
// stream, as an insert or update of the row, in the window of its commit.
//
// Only MariaDB (10.11) is tested; the reader keeps the MySQL paths of the
// capture where it can.
//
// # Concurrency
//
// Open, Run and Close are called by one goroutine at a time; Release may
// run concurrently with Run. Run owns two goroutines (the heartbeat-table
// writer and a stall watchdog) and go-mysql's reader, and waits for all of
// them before it returns. A ChunkReader is used by one goroutine at a time
// (Close excepted) and has no goroutine of its own.
//
// # Limitations
//
//   - One row image larger than event.MaxFrameSize (256 MiB) cannot be
//     delivered; a chunk is never smaller than one rows event.
//   - XA transactions are emitted at XA PREPARE; a later XA ROLLBACK is not
//     retracted. A transaction logged with ROLLBACK (non-transactional
//     changes mixed in) is dropped.
//   - MySQL paths beyond what go-mysql provides are untested: partial JSON
//     updates (binlog_row_value_options=PARTIAL_JSON) are refused as
//     undecodable; compressed transaction payloads are decoded by go-mysql.
//     Only the MariaDB flavor is tested.
//   - Generated (virtual) columns are captured as the log carries them.
//   - Character sets other than utf8mb3, utf8mb4, ascii, latin1 and binary
//     are delivered as bytes.
//   - Two columns whose names differ only in characters Avro does not allow
//     (for example "a-b" and "a_b") make the table's definition invalid and
//     stop capture.
//   - Ids and versions are per state directory: two relays capturing the
//     same server agree on SCNs, not necessarily on schema ids and versions.
package mysql
