// Package source defines the contract between a physical source adapter
// (source/sqlite, source/mysql, source/postgres) and the relay.
//
// # Durability by retention
//
// The relay keeps its event buffer in memory. What makes it survive kill -9
// is that the source's own log still holds every window in the buffer: the
// relay calls Release only for windows it has evicted, and persists that
// release position before calling it. After a restart, the relay runs the
// source again from the persisted release position and rebuilds the same
// windows with the same SCNs, so a consumer resumes without a gap and
// without a repeated SCN. An adapter therefore must:
//
//  1. derive window boundaries and SCNs only from the source's log, so that
//     running from the same position twice yields the same windows;
//  2. keep (or keep the server from purging) everything after the last
//     released position: SQLite keeps change-log rows, PostgreSQL confirms
//     the slot's flush LSN only up to it.
//
// # Large transactions
//
// An adapter need not hold a whole transaction in memory until its commit:
// it may emit it as a series of chunks, each a Window with Partial set,
// followed by one final Window with Partial unset. The window the relay
// stores and serves is the concatenation of the chunks' events, in order,
// then the final Window's events; it has the final Window's SCN, Timestamp,
// TxID and Position. Adapters that never set Partial (the zero value) emit
// whole windows, as before.
//
//   - A chunk (Partial set) has SCN 0, Timestamp 0, TxID "" and the zero
//     Position: its commit position is not known yet. Its events have SCN
//     0; their Timestamp is ignored: the relay gives every event of the
//     window the final Window's SCN and Timestamp. Schema-change events
//     stay where they fall, before the first data event that uses them,
//     even across chunks.
//   - The final Window follows every rule of a whole window (its events
//     carry its SCN) and may have no events of its own.
//   - A chunk with Abandon set (and no events) discards the chunks emitted
//     since the last final or whole window: their transaction will not be
//     delivered (it ended in a rollback, or the adapter is about to read it
//     again after a reconnection). Run returning, for any reason, after
//     chunks without their final Window abandons them too: the relay
//     discards them, and the next Run from the relay's position emits the
//     transaction again from its start.
//   - The relay copies a chunk's events (to memory or to disk) before emit
//     returns, so the adapter may reuse the memory behind them afterwards.
//
// Chunk boundaries need not be deterministic; the events, their order and
// the final SCN must be (rule 1).
package source

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// Position is where a source resumes: the SCN of the last window before it
// and the adapter's own position data (binlog file and offset, LSN, ...).
// The zero Position means "from the oldest change the source still has".
type Position struct {
	SCN  uint64          `json:"scn"`
	Data json.RawMessage `json:"data,omitempty"`
}

// Window is one committed unit of the source's log.
//
// Invariants: SCN is strictly greater than the SCN of the previous window
// the adapter emitted; every event has its SCN field set to SCN; events are
// in the source's order; a schema-change event precedes the first data event
// that uses the version it announces. A window with no events (and no
// chunks before it) is a heartbeat. A chunk of a large window (Partial set)
// follows the rules of "Large transactions" in the package doc instead.
type Window struct {
	SCN       uint64
	Timestamp int64  // commit time, ns since the Unix epoch
	TxID      string // source transaction id (a GTID), may be empty
	Events    []event.Event
	// Position is the position after this window; running from it yields
	// the windows that follow.
	Position Position
	// Partial marks a chunk of a window whose transaction has not been
	// read to its commit yet: more chunks, or the final Window, follow.
	// See "Large transactions" in the package doc.
	Partial bool
	// Abandon, on a chunk (Partial set) with no events, discards the chunks
	// emitted since the last whole or final window.
	Abandon bool
}

// Source is a physical source adapter. An adapter that also implements
// prometheus.Collector has its metrics registered by the relay, under the
// namespace databus_source_. Its methods are called by one relay
// goroutine at a time, except Release, which may be called concurrently
// with Run.
type Source interface {
	// Open connects, checks the source's settings (refusing with an error
	// that names the setting to change) and returns the current schema of
	// every captured table.
	Open(ctx context.Context) ([]schema.Table, error)
	// Run captures committed changes after from and calls emit for each
	// window (or each chunk of a large window, see "Large transactions"),
	// in SCN order. emit may block, which is how the relay pushes
	// back. Run returns when ctx is done (with ctx's error), when emit fails
	// (with that error) or on an error it cannot recover from.
	Run(ctx context.Context, from Position, emit func(context.Context, *Window) error) error
	// Release tells the adapter that the relay no longer needs the windows
	// up to and including pos; the adapter may prune or confirm them.
	Release(ctx context.Context, pos Position) error
	// Close releases the adapter's resources.
	Close() error
}

// ChunkReader reads the existing rows of a source's tables for a bootstrap
// seed (package bootstrap): a keyset-paginated, lock-free copy that the
// seeder brackets with watermark writes, in the manner of Netflix's DBLog.
// Adapters of sources that can be seeded provide one, built from the same
// configuration as their Source. A ChunkReader is used by one goroutine at
// a time.
type ChunkReader interface {
	// ReadChunk reads, in one short statement (no transaction spanning
	// chunks, no table lock), up to limit rows of table t whose primary key
	// follows cursor ("" starts from the first row), in primary-key order.
	// Each row is returned as the data event the adapter's capture would
	// produce for an insert of that row: Kind data, Op insert, Source t.ID,
	// SchemaVersion t.Version, and Key and Payload byte for byte as capture
	// encodes them (SCN and Timestamp zero, no before-image). next is the
	// cursor after the last row returned; fewer than limit rows means the
	// table has no more. It fails with an error wrapping ErrSchemaMismatch
	// when the table's live columns are not those of t (a DDL raced the
	// seed: the seeder retries with the newer version).
	ReadChunk(ctx context.Context, t schema.Table, cursor string, limit int) (rows []event.Event, next string, err error)
	// WriteWatermark commits, in a transaction of its own, the row
	// (slot, mark) into the watermark table, creating the table when it is
	// missing. table is its logical source name ("db._databus_watermark");
	// the relay must capture it, so that the mark appears in the stream at
	// the point of its commit.
	WriteWatermark(ctx context.Context, table, slot, mark string) error
	// EstimateRows returns the server's estimate of the number of rows of
	// table t (for progress and ETA; it need not be exact).
	EstimateRows(ctx context.Context, t schema.Table) (uint64, error)
	// Close releases the reader's connections.
	Close() error
}

// ErrSchemaMismatch is wrapped by ChunkReader.ReadChunk's error when the
// table no longer has the columns of the schema version it was asked for.
var ErrSchemaMismatch = errors.New("databus: table columns differ from the schema version")

// WatermarkTableName is the table name of a seed's watermark table, in the
// database or schema the configuration names. Its columns are slot (the
// primary key, a short string) and mark (a short string).
const WatermarkTableName = "_databus_watermark"
