// Package sqlitestore is the default bootstrap store: one SQLite file
// (modernc.org/sqlite, pure Go) in WAL mode, implementing store.Store.
//
// # Concurrency and durability
//
// A Store holds one write connection, used by Apply and Purge one at a
// time, and a pool of read connections for State, Snapshot, Log and the
// rest. Readers never wait for the writer: each read runs in one SQLite
// read transaction (WAL snapshot isolation), so it sees whole batches
// only. Several Stores (in this process or others) may open the same file:
// writes are serialised by SQLite's write lock (BEGIN IMMEDIATE with a busy
// timeout), and the head check inside the write transaction turns a second
// producer into store.ErrConflict. With the default synchronous=FULL, a
// batch whose Apply returned survives a crash of the process or the
// machine; with SyncNormal it survives a crash of the process only.
//
// # On-disk format (version 1)
//
// The file's header carries application_id 0x44425354 ("DBST") and
// user_version 1, so that Open refuses another SQLite database and a store
// written by a newer format. Tables:
//
//	meta      one row: id (1), store_id TEXT (32 hex digits), head, head_time,
//	          low_watermark, empty (0/1), windows (log entries held)
//	log       scn INTEGER PRIMARY KEY, ts INTEGER NOT NULL (commit time, ns),
//	          frames BLOB NOT NULL (the window's frames, verbatim)
//	snapshot  (source, key) primary key, WITHOUT ROWID; scn, deleted (0/1),
//	          ts (tombstones only: commit time of the window that made the
//	          tombstone, what Purge goes by), ikey and modhash (store.KeyColumns,
//	          NULL when absent; live rows only), frame (the row's insert frame;
//	          NULL for tombstones). Partial index snapshot_tombstones on (ts)
//	          WHERE deleted = 1.
//	schemas   (source, version) primary key; def TEXT: the schema.Table as JSON
//	seeds     tbl TEXT primary key; run, cursor, rows, done, started and updated
//	          (ns since the epoch, NULL for a zero time)
//
// SCNs are stored as SQLite's signed 64-bit integers: Apply refuses an SCN
// above math.MaxInt64 (no source produces one today), and queries clamp
// larger AsOf/UpTo values.
package sqlitestore
