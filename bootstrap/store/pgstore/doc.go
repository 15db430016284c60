// Package pgstore is the PostgreSQL implementation of the bootstrap store
// (package store): one database, shared by any number of bootstrap servers
// and by producers that take turns.
//
// # Sharing
//
// Every process that opens the same database and schema sees the same store:
// one id, one head, one log, one snapshot. Open creates the schema and its
// tables when they are missing, under a transaction-scoped advisory lock, so
// that servers starting together do not trip over each other's DDL; the store
// id is inserted with ON CONFLICT DO NOTHING and read back, so that they all
// agree on it.
//
// Apply serialises writers on the meta row (SELECT ... FOR UPDATE) and checks
// the batch's After against the head it finds there: when two producers race
// with the same After, exactly one commits and the other gets
// store.ErrConflict with nothing of its batch written. Readers never lock:
// Snapshot and CountRows are single statements (one MVCC snapshot each) and
// Log reads in one REPEATABLE READ, READ ONLY transaction, so a concurrent
// Purge can never make a page skip a window silently.
//
// # Tables (format 1)
//
// All in the schema named by Options.Schema:
//
//	meta      one row (id = 1): format, store_id, head, head_time,
//	          low_watermark, empty, windows
//	log       scn bigint primary key, ts bigint, frames bytea
//	snapshot  source bigint, key bytea, scn bigint, ts bigint,
//	          deleted boolean, ikey bigint null, modhash bigint null,
//	          frame bytea null; primary key (source, key); a partial index
//	          on ts where deleted, for Purge
//	schemas   source bigint, version int, def bytea (the JSON of a
//	          schema.Table, kept byte for byte); primary key (source, version)
//	seeds     tbl text primary key, run, cursor, rows, done, started and
//	          updated (ns since the epoch, null for the zero time)
//
// SCNs are stored in bigint columns, so a window or a row with an SCN above
// math.MaxInt64 is refused by Apply: no source derives such SCNs today, and
// storing them wrapped would break the SCN order every query relies on.
//
// snapshot.ts is the commit time of the window that last changed the row.
// Purge uses it for tombstones, because the window itself may already have
// left the log. ikey and modhash come from store.KeyColumns; queries use them
// to push RANGE and MOD partitions into SQL, and every row is still checked
// in Go with the filter, so the push-down only has to select a superset.
//
// The snapshot's order is the primary key's: source, then key compared as
// bytes (PostgreSQL compares bytea like bytes.Compare), which is what the
// keyset pagination `(source, key) > ($1, $2)` walks.
//
// # Limits
//
// A window's frames are one bytea value, so Apply refuses a window of more
// than about 1 GiB of frames (ErrBadBatch) instead of failing in the
// server. Snapshot rows are written in statements of at most 32 MiB of
// frames each.
//
// # Connections
//
// The store keeps its own small pool of pgx connections (Options.MaxConns).
// A call that has to wait for a connection waits until its context ends.
// Every session runs with enable_sort=off, which pins the keyset queries to
// ordered scans of the primary key (see Open). When a connection turns out
// to be broken (a server restart kills idle sessions), a read is retried
// once on a new connection; Apply and Purge are retried only when nothing
// reached the server, and otherwise return the error: the producer reads
// State and tries again, and the After check makes that safe.
package pgstore
