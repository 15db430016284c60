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
